"""The forecast track record: what the platform served, scored against what happened (pure; no I/O here).

A served forecast is made at a closed bar t (its `bar_ts`, the open time of that bar) and forecasts the
realized volatility of bars t+1 … t+24, √Σ r² of their log returns — exactly `WindowSet.y` of the
window ending at t (lib.model.windows). So the realized value of a served forecast is the `y` of the
window with the same (symbol, ts), built from the stored `features`; a forecast whose 24 bars have
not all closed (or straddle a hole in the bars) has no window with a target yet and is counted as
pending, never scored against a partial future.

The baselines are scored on the SAME bars: each is fitted on the windows whose targets ended before
the first scored bar (the benchmark's walk-forward rule: fit on the past, purged by the horizon) and
predicts the windows of the served bars. Losses are lib.model.metrics' (QLIKE, MSE of the variance,
Mincer–Zarnowitz), so the live numbers are the holdout's numbers, on live data.

Served rows are deduplicated per (symbol, bar): the API records one row per request and the scorer's
sink one per bar and model version; the scorer's forecast wins (it scores every bar), else the
API's first forecast of that bar. The champion series is whatever was served at each bar, whichever
model version that was (`versions` says which).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from crypto_platform.lib.model.metrics import mincer_zarnowitz, mse_var, qlike, qlike_losses
from crypto_platform.lib.model.training import fit_baselines
from crypto_platform.lib.model.windows import WindowSet

CHAMPION = "champion"
SOURCE_PRIORITY = {"scorer": 0, "api": 1}  # lower wins when both served a bar
DAY_MS = 86_400_000


@dataclass(frozen=True)
class SeriesScore:
    """Losses of one forecaster over the scored bars (variances: forecast² against realized²)."""

    name: str
    n: int
    qlike: float
    mse_var: float
    mz_a: float
    mz_b: float
    mz_r2: float


@dataclass(frozen=True)
class TrackRecord:
    window_start: str  # first UTC day of the bars scored
    window_end: str  # last UTC day
    n_served: int  # distinct (symbol, bar) forecasts served in the window
    n_scored: int  # … whose 24 bars closed and were stored
    n_pending: int  # … without a realized value (future not closed, or a hole in the stored bars)
    versions: dict[str, int]  # model version → scored bars it served
    sources: dict[str, int]  # api / scorer → scored bars taken from it
    scores: dict[str, SeriesScore]  # champion + every baseline, same bars
    daily_qlike: list[dict[str, Any]]  # per UTC day: {"day", "n", <name>: qlike}
    skipped_baselines: dict[str, str] = field(default_factory=dict)
    # per interval level ("0.8"): {"n": scored forecasts that carried it, "inside": realized within it,
    # "coverage": inside / n}: a calibrated 80 % interval holds ~80 % of what happened
    interval_coverage: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def best_baseline(self) -> str | None:
        baselines = [s for name, s in self.scores.items() if name != CHAMPION and math.isfinite(s.qlike)]
        return min(baselines, key=lambda s: s.qlike).name if baselines else None

    def champion_worse_than_best_baseline(self, tolerance: float = 0.0) -> bool | None:
        """True when the champion's QLIKE exceeds the best baseline's by more than `tolerance` (relative);
        None when there is nothing to compare."""
        best = self.best_baseline
        if CHAMPION not in self.scores or best is None:
            return None
        return self.scores[CHAMPION].qlike > self.scores[best].qlike * (1.0 + tolerance)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = {k: {m: _finite(v) for m, v in asdict(s).items()} for k, s in self.scores.items()}
        out["daily_qlike"] = [{k: _finite(v) for k, v in row.items()} for row in self.daily_qlike]
        out["best_baseline"] = self.best_baseline
        out["champion_worse_than_best_baseline"] = self.champion_worse_than_best_baseline()
        return out

    def to_markdown(self) -> str:
        lines = [
            f"### Forecast track record {self.window_start} … {self.window_end}",
            "",
            f"{self.n_scored} served forecasts scored against the realized volatility of their next 24 bars "
            f"({self.n_served} served, {self.n_pending} without a closed, stored future). "
            f"Sources: {_counts(self.sources)}; model versions: {_counts(self.versions)}.",
            "",
        ]
        if not self.scores:
            return "\n".join([*lines, "Nothing to score.", ""])
        best = self.best_baseline
        lines += [
            "| forecaster | n | QLIKE | MSE (var) | MZ a | MZ b | MZ R² |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in self.scores.items():
            label = f"**{name}**" if name in (CHAMPION, best) else name
            lines.append(
                f"| {label} | {s.n} | {_fmt(s.qlike, '.4f')} | {_fmt(s.mse_var, '.3e')} "
                f"| {_fmt(s.mz_a, '.2e')} | {_fmt(s.mz_b, '.3f')} | {_fmt(s.mz_r2, '.3f')} |"
            )
        worse = self.champion_worse_than_best_baseline()
        if worse is not None:
            verdict = "WORSE than" if worse else "better than"
            lines += [
                "",
                f"The champion is {verdict} the best baseline ({best}) on these bars: QLIKE "
                f"{self.scores[CHAMPION].qlike:.4f} vs {self.scores[best].qlike:.4f}.",
            ]
        if self.interval_coverage:
            lines += [
                "",
                "Predictive intervals: "
                + "; ".join(
                    f"{float(level):.0%} interval held {c['inside']} of {c['n']} realized values "
                    f"({c['coverage']:.1%})"
                    for level, c in self.interval_coverage.items()
                )
                + ".",
            ]
        if self.skipped_baselines:
            lines += [
                "",
                "Baselines not fitted: " + "; ".join(f"{k}: {v}" for k, v in self.skipped_baselines.items()),
            ]
        return "\n".join([*lines, ""])


def served_per_bar(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """One served forecast per (symbol, bar_ts) from the history rows (serving.core.history
    `served_forecasts`): the scorer's if it has one, else the API's earliest; non-positive or
    non-finite values dropped (a forecast the metrics cannot score was never a valid forecast)."""
    frame = pl.DataFrame(
        list(rows),
        schema={
            "source": pl.String,
            "symbol": pl.String,
            "bar_ts": pl.Int64,
            "model_version": pl.String,
            "predicted_volatility": pl.Float64,
            "created_at": pl.Float64,
            "intervals": pl.String,  # JSON [{level, lower, upper}, ...] or null
        },
    )
    frame = frame.filter(pl.col("predicted_volatility").is_finite() & (pl.col("predicted_volatility") > 0))
    priority = pl.col("source").replace_strict(
        SOURCE_PRIORITY, default=len(SOURCE_PRIORITY), return_dtype=pl.Int64
    )
    return (
        frame.with_columns(priority.alias("_priority"))
        .sort("symbol", "bar_ts", "_priority", "created_at")
        .unique(subset=["symbol", "bar_ts"], keep="first", maintain_order=True)
        .drop("_priority")
    )


def baseline_forecasts(
    windows: WindowSet, first_scored_ts: int, names: Sequence[str], scored: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each baseline fitted on the windows whose 24 target bars all opened before `first_scored_ts`,
    then its forecasts for the windows `scored` (indices into `windows`)."""
    train = windows.take(np.flatnonzero(windows.target_end_ts < first_scored_ts))
    if len(train) == 0:
        return {}, {name: "no windows before the scored bars to fit on" for name in names}
    fitted, skipped = fit_baselines(train, names)
    target = windows.take(scored)
    return {name: np.asarray(b.predict(target), dtype=np.float64) for name, b in fitted.items()}, skipped


def _score(name: str, realized: np.ndarray, forecast: np.ndarray) -> SeriesScore:
    realized_var, forecast_var = realized**2, forecast**2
    mz = mincer_zarnowitz(realized_var, forecast_var)
    return SeriesScore(
        name, int(realized.size), qlike(realized_var, forecast_var), mse_var(realized_var, forecast_var),
        mz.a, mz.b, mz.r2,
    )  # fmt: skip


def build_track_record(
    served: pl.DataFrame,
    windows: WindowSet,
    first_bar_ms: int,
    end_bar_ms: int,
    baseline_names: Sequence[str],
) -> TrackRecord:
    """Score `served` (from `served_per_bar`) with bar_ts in [first_bar_ms, end_bar_ms) against the
    realized volatility of `windows` (built WITH targets from the stored features), next to every
    baseline fitted on the earlier windows and scored on the same bars."""
    served = served.filter((pl.col("bar_ts") >= first_bar_ms) & (pl.col("bar_ts") < end_bar_ms))
    keys = pl.DataFrame(
        {
            "symbol": windows.symbol.astype(str),
            "bar_ts": windows.ts.astype(np.int64),
            "_window": np.arange(len(windows), dtype=np.int64),
        }
    )
    joined = served.join(keys, on=["symbol", "bar_ts"], how="left")
    realized_all = np.full(joined.height, np.nan)
    has_window = joined["_window"].is_not_null().to_numpy()
    realized_all[has_window] = windows.y[joined["_window"].drop_nulls().to_numpy()]
    # A flat future (24 unchanged prices) has zero realized variance: QLIKE takes its log, so such a
    # bar cannot be scored by any forecaster; it counts as pending rather than breaking the record.
    ok = np.isfinite(realized_all) & (realized_all > 0)
    scored = joined.filter(pl.Series(ok))
    window = _day(first_bar_ms), _day(end_bar_ms - 1)
    common = dict(
        window_start=window[0],
        window_end=window[1],
        n_served=served.height,
        n_scored=scored.height,
        n_pending=served.height - scored.height,
    )
    if scored.is_empty():
        return TrackRecord(**common, versions={}, sources={}, scores={}, daily_qlike=[])
    idx = scored["_window"].to_numpy()
    realized = windows.y[idx].astype(np.float64)
    forecasts = {CHAMPION: scored["predicted_volatility"].to_numpy().astype(np.float64)}
    baselines, skipped = baseline_forecasts(windows, int(scored["bar_ts"].min()), baseline_names, idx)
    forecasts.update(baselines)
    scores = {name: _score(name, realized, f) for name, f in forecasts.items()}
    return TrackRecord(
        **common,
        versions=_value_counts(scored["model_version"]),
        sources=_value_counts(scored["source"]),
        scores=scores,
        daily_qlike=_daily(scored["bar_ts"].to_numpy(), realized, forecasts),
        skipped_baselines=skipped,
        interval_coverage=interval_coverage(scored["intervals"].to_list(), realized),
    )


def count_inside(
    observations: Iterable[tuple[float | None, float, float, float]],
) -> dict[float | None, tuple[int, int]]:
    """(level, lower, upper, realized) per served interval → per level (None: a level nobody stated):
    (intervals, realized values inside them, bounds inclusive). A calibrated 80 % interval holds ~80 %."""
    counts: dict[float | None, list[int]] = {}
    for level, lower, upper, value in observations:
        seen = counts.setdefault(level, [0, 0])
        seen[0] += 1
        seen[1] += int(lower <= value <= upper)
    ordered = sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0.0))
    return {level: (n, inside) for level, (n, inside) in ordered}


def interval_coverage(intervals: Sequence[str | None], realized: np.ndarray) -> dict[str, dict[str, Any]]:
    """`count_inside` of the scored forecasts' intervals, as the record stores it: level ("0.8") →
    {n, inside, coverage}. `intervals`: each forecast's JSON [{level, lower, upper}, ...], None without."""
    counted = count_inside(
        (float(i["level"]), i["lower"], i["upper"], value)
        for text, value in zip(intervals, realized, strict=True)
        for i in (json.loads(text) if text else ())
    )
    return {
        f"{level:g}": {"n": n, "inside": inside, "coverage": inside / n}
        for level, (n, inside) in counted.items()
    }


def _daily(
    bar_ts: np.ndarray, realized: np.ndarray, forecasts: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    days = bar_ts // DAY_MS
    out = []
    losses = {name: qlike_losses(realized**2, f**2) for name, f in forecasts.items()}
    for day in np.unique(days):
        mask = days == day
        out.append(
            {
                "day": _day(int(day) * DAY_MS),
                "n": int(mask.sum()),
                **{n: float(v[mask].mean()) for n, v in losses.items()},
            }
        )
    return out


def track_record_png(record: TrackRecord) -> bytes | None:
    """Daily QLIKE of the champion and every baseline over the window (None without scored bars)."""
    if not record.daily_qlike:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    days = [row["day"] for row in record.daily_qlike]
    for name in record.scores:
        style = {"color": "black", "linewidth": 2.0} if name == CHAMPION else {"linewidth": 1.0}
        ax.plot(days, [row[name] for row in record.daily_qlike], marker="o", label=name, **style)
    ax.set_ylabel("QLIKE (lower is better)")
    ax.set_title(f"Served forecasts vs baselines, {record.window_start} … {record.window_end}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _value_counts(series: pl.Series) -> dict[str, int]:
    return {
        str(k): int(v)
        for k, v in zip(*series.value_counts(sort=True).to_dict(as_series=False).values(), strict=True)
    }


def _day(ts_ms: int) -> str:
    return np.datetime64(ts_ms, "ms").astype("datetime64[D]").astype(str)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fmt(value: float, spec: str) -> str:
    return "—" if not math.isfinite(value) else format(value, spec)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"
