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


def _plan_symbol(
    bars: SymbolBars,
    index: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    ts: np.ndarray,
    steps: BarSteps,
) -> list[_BarUpdate]:
    """Fill `steps` at `index` (one symbol's ticks, arrival order) and return the bar updates."""
    t = ts[index]
    bar = t - t % bars.bar_ms
    current = bars.open_bar
    last_closed = bars.last_closed_ts
    if current is not None:
        start = current.ts
    elif last_closed is not None:
        start = last_closed
    else:
        start = NO_BAR
    running = np.maximum.accumulate(np.concatenate(([start], bar)))
    before = running[:-1]  # the open bar (or newest closed one) each tick finds
    late = bar < before
    if current is None:
        late |= (bar == before) & (before == start) & (start != NO_BAR)
    opens = bar > before
    closes = opens & ((before != start) | (current is not None))
    closed = np.where(closes, before, NO_BAR)
    first_closed = last_closed if last_closed is not None else NO_BAR
    steps.late[index] = late
    steps.closed[index] = closed
    steps.scored_at[index] = np.maximum.accumulate(np.where(closes, before, first_closed))
    kept = np.flatnonzero(~late)
    if kept.size == 0:
        return []
    kept_bar = bar[kept]
    bounds = np.flatnonzero(np.diff(kept_bar)) + 1
    updates = []
    for lo, hi in zip(
        np.concatenate(([0], bounds)).tolist(), np.concatenate((bounds, [kept.size])).tolist(), strict=True
    ):
        rows = index[kept[lo:hi]]
        p, v, when = price[rows], volume[rows], ts[rows]
        bar_ts = int(kept_bar[lo])
        earliest = int(np.argmin(when))  # first occurrence: the first arrival wins ties
        latest = when.size - 1 - int(np.argmax(when[::-1]))  # last occurrence: the later arrival wins
        opens_new = current is None or bar_ts != current.ts
        if opens_new:
            updates.append(
                _BarUpdate(
                    bar_ts,
                    True,
                    int(rows[0]),
                    float(p[earliest]),
                    int(when[earliest]),
                    float(p[latest]),
                    int(when[latest]),
                    float(p.max()),
                    float(p.min()),
                    float(np.cumsum(v)[-1]),
                    int(rows.size),
                )
            )
            continue
        assert current is not None
        open_price, open_ms = current.open, current.first_ms
        if int(when[earliest]) < open_ms:
            open_price, open_ms = float(p[earliest]), int(when[earliest])
        close_price, close_ms = current.close, current.last_ms
        if int(when[latest]) >= close_ms:
            close_price, close_ms = float(p[latest]), int(when[latest])
        updates.append(
            _BarUpdate(
                bar_ts,
                False,
                int(rows[0]),
                open_price,
                open_ms,
                close_price,
                close_ms,
                max(current.high, float(p.max())),
                min(current.low, float(p.min())),
                float(np.cumsum(np.concatenate(([current.volume], v)))[-1]),
                current.ticks + int(rows.size),
            )
        )
    return updates


@dataclass(frozen=True, slots=True)
class SymbolPlan:
    """What a batch does to one symbol's bars (computed, not applied yet)."""

    bars: SymbolBars
    index: np.ndarray  # the symbol's ticks (input order positions, arrival order)
    updates: list[_BarUpdate]
    late_count: int


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
    (`apply_plan` makes the change), so a failure here leaves them as they were."""
    n = ts.size
    steps = BarSteps(
        np.zeros(n, dtype=bool), np.full(n, NO_BAR, dtype=np.int64), np.full(n, NO_BAR, dtype=np.int64)
    )
    order = np.argsort(symbol_ids, kind="stable")  # per symbol, arrival order kept
    sorted_ids = symbol_ids[order]
    bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
    plans: list[SymbolPlan] = []
    for lo, hi in zip(
        np.concatenate(([0], bounds)).tolist(), np.concatenate((bounds, [n])).tolist(), strict=True
    ):
        if lo == hi:
            continue
        index = order[lo:hi]
        bars = book.get(names[int(sorted_ids[lo])])
        updates = _plan_symbol(bars, index, price, volume, ts, steps)
        plans.append(SymbolPlan(bars, index, updates, int(steps.late[index].sum())))
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
