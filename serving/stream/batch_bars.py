"""A poll batch of ticks into the bar book at once: what `SymbolBars.add` does tick by tick, per symbol.

`SymbolBars.add` (lib.stream.bars) is a small state machine per symbol: the open bar, the newest closed
bar. Tick by tick it costs ~1 µs of Python; here each symbol's ticks of a batch (in arrival order) are
worked out with numpy, and the book is changed once per bar:

- bar of a tick = ts − ts mod bar_ms; the open bar before tick i is the running maximum of the bars
  seen so far (starting from the open bar, or the newest closed one when none is open);
- a tick is *late* when its bar is below that maximum (or equals the newest closed bar while no bar is
  open): not merged, as `add` does;
- a tick whose bar is above it opens a new bar and closes the open one (if any);
- the newest closed bar after each tick is the running maximum of the bars closed so far;
- OHLCV of each bar from its non-late ticks with `OpenBar.add`'s rules: open = price of the earliest
  timestamp (ties: the first arrival; the open bar's own open wins ties), close = price of the latest
  timestamp (ties: the later arrival), high/low the extremes, volume summed in arrival order (a
  sequential cumulative sum, so the float sum is `add`'s to the bit).

Each new bar is opened through `SymbolBars.add` with its first tick (which closes the previous one, as
the tick-by-tick path does), then given the aggregate of its ticks; ticks into the bar already open
update its fields. Everything is computed before the book is touched, so a failure leaves it unchanged
(the caller then goes tick by tick). `test_stream_batch_path.py` checks this against `SymbolBars.add`
on random streams with bar closes, late and out-of-order ticks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crypto_platform.lib.stream.bars import BarBook, SymbolBars
from crypto_platform.lib.stream.ticks import Tick

NO_BAR = np.iinfo(np.int64).min  # "no bar" in the int64 columns below (bar timestamps are ≥ 0)


@dataclass(frozen=True, slots=True)
class BarSteps:
    """Per tick of the batch (input order) what `SymbolBars.add` would have answered."""

    late: np.ndarray  # bool
    scored_at: np.ndarray  # int64: newest closed bar of the symbol after the tick (NO_BAR: none)
    closed: np.ndarray  # int64: the bar this tick closed (NO_BAR: none; a tick closes at most one)


@dataclass(frozen=True, slots=True)
class _BarUpdate:
    """One bar's ticks of the batch, aggregated: merged into the open bar or opening a new one."""

    bar_ts: int
    opens_new: bool
    first: int  # index (input order) of its first tick: the one a new bar is opened with
    open: float
    open_ms: int
    close: float
    close_ms: int
    high: float
    low: float
    volume: float
    ticks: int


@dataclass(frozen=True, slots=True)
class SymbolPlan:
    """What a batch does to one symbol's bars (computed, not applied yet)."""

    bars: SymbolBars
    index: np.ndarray  # the symbol's ticks (input order positions, arrival order)
    updates: list[_BarUpdate]
    late_count: int


def _segment_running_max(values: np.ndarray, segments: np.ndarray, spread: int) -> np.ndarray:
    """Running maximum of `values` (int64, ≥ 0, < `spread`) restarting at each segment (`segments`:
    the segment of each value, non-decreasing): one accumulate, each segment lifted above the ones
    before it."""
    lift = segments * spread
    return np.maximum.accumulate(values + lift) - lift


def plan_ticks(
    book: BarBook,
    names: list[str],
    symbol_ids: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    ts: np.ndarray,
) -> tuple[BarSteps, list[SymbolPlan]]:
    """What adding a batch of ticks (columns in input order; `names[symbol_ids[i]]` is tick i's symbol)
    to `book` one by one would answer per tick, and the change per symbol; the bars are not touched
    (`apply_plan` makes the change), so a failure here leaves them as they were.

    All symbols at once: the ticks sorted by symbol (arrival order kept within one), each symbol a
    segment, the per-symbol running maxima computed in one pass and the bars' OHLCV by `reduceat`
    (numpy calls per batch, not per symbol: a symbol costs the reading of its state and a few
    Python steps per bar it touches)."""
    n = ts.size
    steps = BarSteps(
        np.zeros(n, dtype=bool), np.full(n, NO_BAR, dtype=np.int64), np.full(n, NO_BAR, dtype=np.int64)
    )
    if n == 0:
        return steps, []
    order = np.argsort(symbol_ids, kind="stable")  # per symbol, arrival order kept
    sorted_ids = symbol_ids[order]
    heads = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    ends = np.concatenate((heads[1:], [n]))
    count = heads.size
    segment = np.repeat(np.arange(count, dtype=np.int64), ends - heads)
    held = [book.get(names[i]) for i in sorted_ids[heads].tolist()]
    bar_ms = held[0].bar_ms
    if any(bars.bar_ms != bar_ms for bars in held):
        raise ValueError("the bars of one batch must share one timeframe")
    # Each symbol's state; "none" is −1 here, under every bar (bars are ≥ 0), and 1 is added below
    # so that the running maxima work on values ≥ 0.
    opened = [bars.open_bar for bars in held]
    closed_before = [bars.last_closed_ts for bars in held]
    start = np.array(
        [
            bar.ts if bar is not None else (last if last is not None else -1)
            for bar, last in zip(opened, closed_before, strict=True)
        ],
        dtype=np.int64,
    )
    has_open = np.array([bar is not None for bar in opened], dtype=bool)
    last_closed = np.array([last if last is not None else -1 for last in closed_before], dtype=np.int64)
    t = ts[order]
    bar = t - t % bar_ms
    spread = max(int(bar.max()), int(start.max()), 0) + 2
    if spread * (count + 1) >= 2**62:
        raise ValueError("too many symbols or too late a timestamp for one batch's running maxima")
    # The open bar (or newest closed one) each tick finds: the running maximum of its symbol's bars,
    # starting from the symbol's state, which is placed in front of the symbol's ticks.
    at = np.arange(n, dtype=np.int64) + segment + 1  # each tick's place, behind its symbol's start
    firsts = heads + np.arange(count, dtype=np.int64)
    values = np.empty(n + count, dtype=np.int64)
    segments = np.empty(n + count, dtype=np.int64)
    values[firsts], values[at] = start + 1, bar + 1
    segments[firsts], segments[at] = np.arange(count, dtype=np.int64), segment
    before = _segment_running_max(values, segments, spread)[at - 1] - 1
    start_row, open_row = start[segment], has_open[segment]
    late = (bar < before) | (~open_row & (bar == before) & (before == start_row) & (start_row >= 0))
    opens = bar > before
    closes = opens & ((before != start_row) | open_row)
    newest = _segment_running_max(np.where(closes, before, last_closed[segment]) + 1, segment, spread) - 1
    steps.late[order] = late
    steps.closed[order] = np.where(closes, before, NO_BAR)
    steps.scored_at[order] = np.where(newest < 0, NO_BAR, newest)
    late_counts = np.add.reduceat(late.astype(np.int64), heads).tolist()
    updates: list[list[_BarUpdate]] = [[] for _ in range(count)]
    kept = np.flatnonzero(~late)
    if kept.size:
        # One group per (symbol, bar) of the non-late ticks (their bars never go down within a symbol).
        kept_bar, kept_segment = bar[kept], segment[kept]
        changes = (kept_bar[1:] != kept_bar[:-1]) | (kept_segment[1:] != kept_segment[:-1])
        group_starts = np.flatnonzero(np.concatenate(([True], changes)))
        group_ends = np.concatenate((group_starts[1:], [kept.size]))
        rows = order[kept]  # input positions, per symbol in arrival order
        p, when, v = price[rows], ts[rows], volume[rows]
        high = np.maximum.reduceat(p, group_starts).tolist()
        low = np.minimum.reduceat(p, group_starts).tolist()
        group = np.repeat(np.arange(group_starts.size), group_ends - group_starts)
        # Open: the earliest timestamp, the first arrival among ties; close: the latest, the last one.
        earliest = np.flatnonzero(when == np.minimum.reduceat(when, group_starts)[group])
        opening = earliest[np.searchsorted(earliest, group_starts)].tolist()
        latest = np.flatnonzero(when == np.maximum.reduceat(when, group_starts)[group])
        closing = latest[np.searchsorted(latest, group_ends) - 1].tolist()
        for g, (lo, hi, k) in enumerate(
            zip(group_starts.tolist(), group_ends.tolist(), kept_segment[group_starts].tolist(), strict=True)
        ):
            current = opened[k]
            bar_ts = int(kept_bar[lo])
            o, c = opening[g], closing[g]
            if current is None or bar_ts != current.ts:
                updates[k].append(
                    _BarUpdate(
                        bar_ts,
                        True,
                        int(rows[lo]),
                        float(p[o]),
                        int(when[o]),
                        float(p[c]),
                        int(when[c]),
                        high[g],
                        low[g],
                        float(np.cumsum(v[lo:hi])[-1]),  # in arrival order, as `OpenBar.add` adds
                        hi - lo,
                    )
                )
                continue
            open_price, open_ms = current.open, current.first_ms
            if int(when[o]) < open_ms:  # the open bar's own open wins ties
                open_price, open_ms = float(p[o]), int(when[o])
            close_price, close_ms = current.close, current.last_ms
            if int(when[c]) >= close_ms:
                close_price, close_ms = float(p[c]), int(when[c])
            updates[k].append(
                _BarUpdate(
                    bar_ts,
                    False,
                    int(rows[lo]),
                    open_price,
                    open_ms,
                    close_price,
                    close_ms,
                    max(current.high, high[g]),
                    min(current.low, low[g]),
                    float(np.cumsum(np.concatenate(([current.volume], v[lo:hi])))[-1]),
                    current.ticks + hi - lo,
                )
            )
    plans = [
        SymbolPlan(bars, order[lo:hi], updates[k], late_counts[k])
        for k, (bars, lo, hi) in enumerate(zip(held, heads.tolist(), ends.tolist(), strict=True))
    ]
    return steps, plans


def apply_plan(plan: SymbolPlan, price: np.ndarray, volume: np.ndarray, ts: np.ndarray) -> None:
    """Change the symbol's bars as its ticks would have, one by one."""
    bars = plan.bars
    opened = 0
    for update in plan.updates:
        if update.opens_new:
            first = update.first
            bars.add(Tick(bars.symbol, float(price[first]), float(volume[first]), int(ts[first])))
            opened += 1
        bar = bars.open_bar
        if bar is None or bar.ts != update.bar_ts:
            raise RuntimeError(f"{bars.symbol}: the open bar is not the planned {update.bar_ts}")
        bar.open, bar.first_ms = update.open, update.open_ms
        bar.close, bar.last_ms = update.close, update.close_ms
        bar.high, bar.low = update.high, update.low
        bar.volume, bar.ticks = update.volume, update.ticks
    bars.ticks += plan.index.size - opened  # `add` counted the ticks it was given
    bars.late_ticks += plan.late_count


def add_ticks(
    book: BarBook,
    names: list[str],
    symbol_ids: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    ts: np.ndarray,
) -> BarSteps:
    """`plan_ticks`, then `apply_plan` for every symbol."""
    steps, plans = plan_ticks(book, names, symbol_ids, price, volume, ts)
    for plan in plans:
        apply_plan(plan, price, volume, ts)
    return steps
