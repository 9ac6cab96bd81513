"""The price-move alert rule over one symbol's ticks of a poll batch at once.

`AlertEngine.on_tick` (lib.stream.alerts) costs ~1.2 µs a tick in Python: two monotonic deques give the
lowest and highest price of the last `price_move_window_ms` (event time), then the symbol's `Gate` is
asked whether the move fires. Here, for a run of ticks whose timestamps do not go backwards (the normal
case; out-of-order ticks inside the open bar do exist), the same figures come from numpy:

- the window of tick i is every price seen with a timestamp ≥ tᵢ − window (the engine's deques hold what
  is left of earlier batches: a price is dropped from a deque only when a later price dominates it or
  it left the window, so the extreme over "deque + this batch" is the engine's);
- the window extremes come from a sparse table (log₂ n numpy passes), the move and its magnitude as
  `on_tick` computes them (same float operations);
- the gate is stepped only where it can change: while armed at ticks whose move reaches the threshold,
  while disarmed at ticks whose move has fallen under the re-arm level (elsewhere `Gate.update` is a
  no-op), so a calm batch costs no Python per tick;
- the deques are left as `on_tick` would leave them (the prices no later price dominates, inside the
  last tick's window), so the next batch, vectorised or tick by tick, continues the same state.

A run whose timestamps go backwards anywhere (in it, or behind what the deques hold) answers None: the
caller feeds those ticks to `on_tick` one by one, which is exact for any order.

Both paths step one state, the engine's (`AlertEngine.price_rule`: the symbol's window and gate), and
raise the same alert (`AlertEngine.price_move_alert`); `test_stream_batch_path.py` checks the alerts and
the state left against `on_tick` on random streams.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from crypto_platform.lib.stream.alerts import Alert, AlertEngine


class _SparseTable:
    """Range extremes (`pick`: np.maximum or np.minimum) of one array, many queries at once: row k
    holds the extreme of each run of 2ᵏ values (padded with `pick`'s identity), so the extreme of
    values[start : end + 1] is that of two overlapping runs."""

    def __init__(self, values: np.ndarray, pick) -> None:
        self.pick = pick
        n = values.size
        levels = max(int(n).bit_length(), 1)
        identity = -np.inf if pick is np.maximum else np.inf
        table = np.full((levels, n), identity, dtype=np.float64)
        table[0] = values
        span = 1
        for k in range(1, levels):
            below = table[k - 1]
            pick(below[: n - span], below[span:], out=table[k, : n - span])
            span *= 2
        self.table = table

    def query(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Extreme of values[starts[i] : ends[i] + 1] (every range non-empty)."""
        level = np.frexp((ends - starts + 1).astype(np.float64))[1] - 1  # floor(log2(length)), exact
        return self.pick(self.table[level, starts], self.table[level, ends - (1 << level) + 1])


class DequeCopies:
    """numpy copies of the deques `apply_price_moves` left, so that the next batch need not read a
    deque entry by entry (hundreds of entries in a trending market: ~70 ns each). A copy is used only
    while the engine still holds that very deque object, at the same length and with the same ends;
    whoever calls `on_tick` for a symbol (which changes its deques in place) calls `forget` as well."""

    def __init__(self) -> None:
        self._copies: dict[tuple[str, bool], tuple[deque, np.ndarray, np.ndarray]] = {}

    def forget(self, symbol: str) -> None:
        self._copies.pop((symbol, True), None)
        self._copies.pop((symbol, False), None)

    def keep(self, symbol: str, highs: bool, entries: deque, ts: np.ndarray, price: np.ndarray) -> None:
        self._copies[(symbol, highs)] = (entries, ts, price)

    def arrays(self, symbol: str, highs: bool, entries: deque) -> tuple[np.ndarray, np.ndarray] | None:
        """(ts, price) of `entries` in order with ts never going back; None where they go back."""
        copy = self._copies.get((symbol, highs))
        if copy is not None:
            held, ts, price = copy
            if (
                held is entries
                and len(entries) == ts.size
                and (not ts.size or (entries[0] == (ts[0], price[0]) and entries[-1] == (ts[-1], price[-1])))
            ):
                return ts, price
        ts = np.fromiter((entry[0] for entry in entries), dtype=np.int64, count=len(entries))
        price = np.fromiter((entry[1] for entry in entries), dtype=np.float64, count=len(entries))
        if ts.size > 1 and bool((np.diff(ts) < 0).any()):
            return None
        return ts, price


def _window_extremes(
    held: list[tuple[np.ndarray, np.ndarray]],
    runs: list[tuple[np.ndarray, np.ndarray]],
    window_ms: int,
    pick,
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """For several symbols at once (`held[s]`: (ts, price) of the symbol's deque, `runs[s]`: its
    ticks'): per tick the extreme price of its window, and per symbol (ts, price) of the deque
    `MoveWindow.add` would leave. Each symbol is a segment of one concatenation, so the numpy calls
    are per batch, not per symbol."""
    ts_parts, price_parts, bounds = [], [], [0]
    for (old_ts, old_price), (ts, price) in zip(held, runs, strict=True):
        ts_parts += (old_ts, ts)
        price_parts += (old_price, price)
        bounds.append(bounds[-1] + old_ts.size)
        bounds.append(bounds[-1] + ts.size)
    all_ts, all_price = np.concatenate(ts_parts), np.concatenate(price_parts)
    table = _SparseTable(all_price, pick)
    # Each tick's window: from the first price of its symbol with ts ≥ its horizon (the deque drops
    # ts < horizon) to the tick itself.
    starts, ends, segment_ends, horizons = [], [], [], []
    for s, (ts, _) in enumerate(runs):
        first, new, end = bounds[2 * s], bounds[2 * s + 1], bounds[2 * s + 2]
        starts.append(first + np.searchsorted(all_ts[first:end], ts - window_ms, side="left"))
        ends.append(np.arange(new, end, dtype=np.int64))
        segment_ends.append(np.full(end - first, end - 1, dtype=np.int64))
        horizons.append(np.full(end - first, int(ts[-1]) - window_ms, dtype=np.int64))
    extreme = table.query(np.concatenate(starts), np.concatenate(ends))
    # What stays: a price no later price of its symbol reaches (highs pop `<=`, lows pop `>=`), inside
    # the symbol's last window.
    last = np.concatenate(segment_ends)
    rows = np.arange(all_ts.size, dtype=np.int64)
    has_later = rows < last
    later = np.full(all_ts.size, -np.inf if pick is np.maximum else np.inf)
    later[has_later] = table.query(rows[has_later] + 1, last[has_later])
    keep = all_price > later if pick is np.maximum else all_price < later
    keep &= all_ts >= np.concatenate(horizons)
    per_tick, left = [], []
    position = 0
    for s, (ts, _) in enumerate(runs):
        per_tick.append(extreme[position : position + ts.size])
        position += ts.size
        kept = np.flatnonzero(keep[bounds[2 * s] : bounds[2 * s + 2]]) + bounds[2 * s]
        left.append((all_ts[kept], all_price[kept]))
    return per_tick, left


@dataclass(frozen=True, slots=True)
class MovePlan:
    """One symbol's run worked out, not applied yet: its moves, and the deques it leaves."""

    symbol: str
    ts: np.ndarray
    move: np.ndarray
    active: np.ndarray  # the move reaches the threshold
    cleared: np.ndarray  # the move is under the re-arm level
    highs: tuple[np.ndarray, np.ndarray]  # (ts, price) of the deques it leaves
    lows: tuple[np.ndarray, np.ndarray]


def plan_price_moves(
    engine: AlertEngine, runs: list[tuple[str, np.ndarray, np.ndarray]], copies: DequeCopies
) -> list[MovePlan | None]:
    """For each (symbol, ts, price) of `runs` (one per symbol, ticks in arrival order) the moves
    `on_tick` would compute, without changing the engine (`apply_price_moves` does); None for a run
    whose timestamps go backwards (the caller runs `on_tick` on it)."""
    plans: list[MovePlan | None] = [None] * len(runs)
    chosen: list[int] = []
    held_highs: list[tuple[np.ndarray, np.ndarray]] = []
    held_lows: list[tuple[np.ndarray, np.ndarray]] = []
    for s, (symbol, ts, _) in enumerate(runs):
        if ts.size == 0 or (ts.size > 1 and bool((np.diff(ts) < 0).any())):
            continue
        window, _ = engine.price_rule(symbol)
        highs = copies.arrays(symbol, True, window.highs)
        lows = copies.arrays(symbol, False, window.lows)
        first = int(ts[0])
        if highs is None or lows is None or any(t.size and int(t[-1]) > first for t, _ in (highs, lows)):
            continue
        chosen.append(s)
        held_highs.append(highs)
        held_lows.append(lows)
    if not chosen:
        return plans
    window_ms = engine.config.price_move_window_ms
    pairs = [(runs[s][1], runs[s][2]) for s in chosen]
    highs, high_deques = _window_extremes(held_highs, pairs, window_ms, np.maximum)
    lows, low_deques = _window_extremes(held_lows, pairs, window_ms, np.minimum)
    for k, s in enumerate(chosen):
        symbol, ts, price = runs[s]
        up, down = price / lows[k] - 1.0, price / highs[k] - 1.0
        move = np.where(up >= -down, up, down)
        magnitude = np.abs(move)
        plans[s] = MovePlan(
            symbol,
            ts,
            move,
            magnitude >= engine.move_threshold,
            magnitude < engine.move_rearm,
            high_deques[k],
            low_deques[k],
        )
    return plans


def apply_price_moves(engine: AlertEngine, plan: MovePlan, copies: DequeCopies) -> list[tuple[int, Alert]]:
    """Step the symbol's gate through a planned run and leave its deques as `on_tick` would: the
    alerts raised, each with the index of its tick in the run."""
    window, gate = engine.price_rule(plan.symbol)
    for is_highs, (kept_ts, kept_price) in ((True, plan.highs), (False, plan.lows)):
        entries = deque(zip(kept_ts.tolist(), kept_price.tolist(), strict=True))
        if is_highs:
            window.highs = entries
        else:
            window.lows = entries
        copies.keep(plan.symbol, is_highs, entries, kept_ts, kept_price)
    ts, move, active, cleared = plan.ts, plan.move, plan.active, plan.cleared
    alerts: list[tuple[int, Alert]] = []
    active_at, cleared_at = np.flatnonzero(active), np.flatnonzero(cleared)
    i, n = 0, ts.size
    while i < n:
        if gate.seen:
            candidates = active_at if gate.armed else cleared_at
            at = int(np.searchsorted(candidates, i))
            if at == candidates.size:
                break  # no tick left where the gate can change
            j = int(candidates[at])
        else:
            j = i  # the gate's first look sets its starting state
        if gate.update(bool(active[j]), bool(cleared[j]), int(ts[j])):
            alerts.append((j, engine.price_move_alert(plan.symbol, float(move[j]), int(ts[j]))))
        i = j + 1
    return alerts


def price_moves(
    engine: AlertEngine, runs: list[tuple[str, np.ndarray, np.ndarray]], copies: DequeCopies | None = None
) -> list[list[tuple[int, Alert]] | None]:
    """`plan_price_moves` then `apply_price_moves`: per run the alerts (None: the run was left to
    `on_tick`, nothing changed)."""
    copies = copies if copies is not None else DequeCopies()
    return [
        None if plan is None else apply_price_moves(engine, plan, copies)
        for plan in plan_price_moves(engine, runs, copies)
    ]
