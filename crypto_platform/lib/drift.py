"""Feature and label drift: is the recent window unusual for a window of its length in the reference?

The reference is the champion's training period (every symbol, hourly rows with `ts`); the recent
window is the last few days of the same symbols. The question asked is not "do these rows come from
the reference's distribution" — a plain two-sample KS test answers that as if the rows were independent,
and hourly features are anything but: a 7-day window of `realized_vol_720` is one month's volatility
seen 168 times, and volatility clusters for days. On the project's own stationary simulator that test
flags seven features on every evaluation. The question asked here is "would a stretch of this length, cut
from the reference period itself, look this different from the rest of it" — like compared with like.

Method (a block null over the reference period):

1. Bins. Per column, the reference's percentiles (`FINE_BINS`) and deciles (`PSI_BINS`). A sample's
   distance from the reference is the KS distance read on the percentile grid and the PSI on the deciles.
2. Scales. The recent window is judged whole and by its trailing `TRAILING_WINDOWS_BARS` (the last day,
   the last three days): a change that began two days ago fills the short windows and is diluted in
   the long one, so looking at the recent end is what makes detection fast.
3. Null windows. Every stretch of the reference shaped like the recent window (same length, same
   trailing parts, all symbols over one calendar span, as the recent window holds them), one ending
   every `NULL_STRIDE_BARS`. Each part is compared with the reference minus itself and `GUARD_BARS`
   either side, so that it is never judged against its own autocorrelated neighbourhood (the recent
   window is not in the reference either). The stretches keep the hourly autocorrelation, volatility
   clustering and cross-symbol correlation of the data, which a row-level test throws away.
4. Statistics. Every column: the KS distance of each part from the reference. Volatility-like columns
   (`DISPERSION_COLUMNS`: a return's size, a bar's range, the 24-bar realized volatility, a band width)
   also get two size statistics, because a change of volatility moves their mean log |value| by
   ln(factor) from its first bar on, long before the KS distance of a 7-day window is large:
   * scale — each part's mean log |value| minus that of a typical same-length reference window;
   * change — the step inside the recent window: a trailing part's mean log |value| minus that of the
     rest of the window before it. It sees a change whatever the level before it was, also where that
     level was the reference's calm (the scale statistic alone then sees ×2 as "normal").
   Both are taken per symbol and combined by `common_shift` — the shift every symbol shares — because
   a symbol's own turbulent spell is an everyday event of the reference and a market-wide change is not.
5. p-values. A test's raw p-value is the recent window's rank among the null windows' statistics. All
   tests — columns, label, scales and statistics — form one family, corrected by Westfall–Young max-T:
   each statistic is standardised by its null median and upper-tail spread, and the adjusted p-value
   is the share of null windows whose largest standardised statistic (over the whole family) reaches
   it. Within the reference, the chance that a window flags anything is then at most `alpha`, whatever
   the correlation between the tests. (Min-p on ranks would need far more null windows than a year
   holds: with ~300 windows and ~60 tests, many null windows are the most extreme of all in some test.)
   A window *after* the reference is flagged more often than that: the null windows are ~300 stretches
   of one year, overlapping and sharing its spells, and the standardisation reads their own tail, so
   the rank of a window from another stretch of time is not uniform among them. Measured on the
   stationary simulator (four symbols, the platform's default; `benchmarks/drift.py`), the days after
   the reference are flagged 3.6 % of the time at alpha 0.015, ~5 % at 0.02 and 4.5–5.7 % at 0.025 over
   sets of 200 seeds. `DEFAULT_ALPHA` is therefore a nominal level chosen from that measurement (on
   seeds 0–599, checked on seeds 600–799), not the false-alarm rate itself.
6. Effect-size floor. Significance alone would flag a shift of any size once the reference is long.
   The floor is on the excess over what a window of that length shows anyway: the recent KS minus the
   null windows' median KS ≥ `ks_floor`, or the same for PSI ≥ `psi_floor`; for the size statistics,
   a shift (or step) of mean log |value| ≥ `scale_floor` beyond the typical one. Because the typical
   same-length value is subtracted, a floor means the same for a 1-day and a 30-day window.

Label drift (realized volatility) is judged the same way, in the same family, and reported on its own:
a change in the market's volatility level is a reason to retrain, not evidence that inputs are broken.
A reference too short to cut `MIN_NULL_WINDOWS` null windows from gives an undetermined report (no
drift flagged, the reason said) rather than a guess. `benchmarks/drift.py` measures false alarms on
the stationary simulator, detection delays of planted changes and the firing rate on real data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from crypto_platform.lib.features import LOOKBACK_BARS

FINE_BINS = 100
PSI_BINS = 10
# Keeps ln(p/q) finite when a bin is empty in one sample.
PSI_EPSILON = 1e-4
# The last day and the last three days of the recent window are judged too (for hourly bars).
TRAILING_WINDOWS_BARS: tuple[int, ...] = (24, 72)
# One null window per day: windows a day apart overlap (the null is read from dependent windows, which
# is fine for its quantiles), and finer steps add cost without new information.
NULL_STRIDE_BARS = 24
# A bar's features depend on the LOOKBACK_BARS before it, so a null window's neighbours within that
# distance share bars with it: they are left out of the reference it is compared with.
GUARD_BARS = LOOKBACK_BARS
# Fewer null windows than this cannot resolve a p-value of 0.05.
MIN_NULL_WINDOWS = 20
# The family's nominal level. Not 0.05: a window after the reference is ranked among windows of the
# reference, and that rank is anti-conservative out of sample (module doc, point 5). At 0.015 the
# stationary simulator's false alarms are 3.6 % of daily evaluations with the platform's four default
# symbols (seeds 600–799, not used to choose it), a ×2 volatility change is found in a median of 1 day
# and a ×2 volume level in 5–7 (`benchmarks/drift.py`).
DEFAULT_ALPHA = 0.015
METHOD = (
    "same-length windows of the reference period (block null): KS distance and, for volatility-like "
    "columns, the window mean of log |value|; Westfall-Young max-T"
)
# Columns whose magnitude follows the market's volatility within a day (a return's size, a bar's range,
# the 24-bar realized volatility, a band width). A change of volatility moves the mean of log |value| of
# these at once, by ln(factor) — ×2 volatility is +0.69 from the first bar on — while their KS distance
# grows only as the changed bars fill the window; so these also get a scale statistic. The 168- and
# 720-bar realized volatilities move too slowly for it to add what their KS does not (measured on the
# benchmark's 20 seeds: with them the false alarms rose from 6 % to 9 %, detection no faster).
DISPERSION_COLUMNS = frozenset({"log_ret", "hl_range", "realized_vol_24", "bb_width", "vol24"})
# |value| below this share of the reference's median |value| counts as that floor: a zero return (a
# price that did not move a tick) would otherwise be log 0.
LOG_FLOOR_SHARE = 0.01


@dataclass(frozen=True)
class FeatureDrift:
    """One column's verdict, with the numbers of the trailing window that gave the strongest evidence."""

    feature: str
    ks_statistic: float
    p_value: float | None  # rank of the window's KS among the null windows'; None when undetermined
    p_value_adjusted: float | None  # Westfall–Young max-T over columns and scales
    psi: float
    ks_null_median: float | None  # what a window of this length typically shows
    psi_null_median: float | None
    reference_mean: float
    current_mean: float
    n_reference: int
    n_current: int
    drifted: bool
    window_bars: int = 0  # which trailing window of the recent one these numbers are of
    evidence: str = ""  # the statistic the p-values are of: "distribution" (KS) or "scale"
    # The window's mean log |value| minus that of a typical same-length reference window (volatility-like
    # columns; ×2 volatility ≈ +0.69), None for other columns.
    log_scale_shift: float | None = None
    # The step of mean log |value| inside the recent window (the trailing part minus the rest of the
    # window), minus a typical reference window's; None for other columns and for the whole window.
    log_scale_change: float | None = None


@dataclass
class DriftReport:
    features: list[FeatureDrift]
    label: FeatureDrift | None
    alpha: float
    ks_floor: float
    psi_floor: float
    scale_floor: float = 0.25
    drifted_features: list[str] = field(default_factory=list)
    window_bars: int = 0
    trailing_windows_bars: tuple[int, ...] = ()
    n_null_windows: int = 0
    family_p_value: float | None = None
    undetermined: str | None = None  # why no verdict could be reached, None when one was

    @property
    def feature_drift_detected(self) -> bool:
        return bool(self.drifted_features)

    @property
    def label_drift_detected(self) -> bool:
        return bool(self.label and self.label.drifted)

    def to_dict(self) -> dict:
        return {
            "method": METHOD,
            "feature_drift_detected": self.feature_drift_detected,
            "label_drift_detected": self.label_drift_detected,
            "drifted_features": list(self.drifted_features),
            "alpha": self.alpha,
            "ks_floor": self.ks_floor,
            "psi_floor": self.psi_floor,
            "scale_floor": self.scale_floor,
            "window_bars": self.window_bars,
            "trailing_windows_bars": list(self.trailing_windows_bars),
            "n_null_windows": self.n_null_windows,
            "family_p_value": self.family_p_value,
            "undetermined": self.undetermined,
            "features": [asdict(f) for f in self.features],
            "label": asdict(self.label) if self.label else None,
        }

    def to_markdown(self) -> str:
        feature_status = (
            "DETECTED in " + ", ".join(self.drifted_features) if self.drifted_features else "none"
        )
        label_status = "detected" if self.label_drift_detected else "none"
        lines = [f"**Feature drift:** {feature_status} · **Label drift:** {label_status}", ""]
        if self.undetermined:
            lines += [f"**Undetermined:** {self.undetermined}", ""]
        scales = ", ".join(str(b) for b in self.trailing_windows_bars)
        lines += [
            f"The last {self.window_bars} bars (and their trailing {scales} bars) against "
            f"{self.n_null_windows} stretches of the reference period shaped the same. Drifted = "
            f"Westfall–Young adjusted p ≤ {self.alpha} and, for a distribution shift, KS − null median "
            f"KS ≥ {self.ks_floor} or PSI − null median PSI ≥ {self.psi_floor}; for a scale shift of a "
            f"volatility-like column, a shift of mean log |value| (against the null, or as a step inside "
            f"the window) ≥ {self.scale_floor}. Each row shows the trailing window and statistic with the "
            "strongest evidence.",
            "",
            "| feature | window (bars) | evidence | KS | null KS (median) | log scale shift "
            "| log scale step | p | p (adjusted) | PSI | null PSI (median) | ref mean | cur mean | drifted |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
        ]
        rows = [*self.features, *([self.label] if self.label else [])]
        for f in rows:
            name = f"{f.feature} (label)" if self.label is not None and f is self.label else f.feature
            lines.append(
                f"| {name} | {f.window_bars} | {f.evidence or '–'} | {f.ks_statistic:.3f} | "
                f"{_fmt(f.ks_null_median, '.3f')} | {_fmt(f.log_scale_shift, '+.2f')} | "
                f"{_fmt(f.log_scale_change, '+.2f')} | "
                f"{_fmt(f.p_value, '.2g')} | {_fmt(f.p_value_adjusted, '.2g')} | {f.psi:.3f} | "
                f"{_fmt(f.psi_null_median, '.3f')} | {f.reference_mean:.4g} | {f.current_mean:.4g} | "
                f"{'yes' if f.drifted else 'no'} |"
            )
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


# --------------------------------------------------------------------------------------------------
# Distances between a sample and the reference
# --------------------------------------------------------------------------------------------------


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI = Σ (p_cur − p_ref) · ln(p_cur / p_ref) over quantile bins of the reference."""
    reference = _finite(reference)
    current = _finite(current)
    if reference.size == 0 or current.size == 0:
        raise ValueError("PSI needs non-empty reference and current samples")
    binning = _Binning(reference, bins)
    return _psi_from_counts(binning.counts(current), binning.counts(reference))


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


class _Binning:
    """Quantile bins of one column's reference; open-ended outer bins catch values beyond its range."""

    def __init__(self, reference: np.ndarray, bins: int) -> None:
        finite = _finite(reference)
        edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
        # A constant reference gets two bins: "the constant" and "anything else".
        self.constant: float | None = float(edges[0]) if edges.size < 2 else None
        self.inner = edges[1:-1] if self.constant is None else np.empty(0)
        self.n_bins = 2 if self.constant is not None else self.inner.size + 1

    def index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value; non-finite values go to an extra bin `n_bins`, which counts ignore."""
        values = np.asarray(values, dtype=float)
        if self.constant is not None:
            index = np.where(np.isclose(values, self.constant), 0, 1)
        else:
            index = np.searchsorted(self.inner, values, side="right")
        return np.where(np.isfinite(values), index, self.n_bins)

    def counts(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.index(values), minlength=self.n_bins + 1)[: self.n_bins]

    def cumulative_counts(self, values: np.ndarray) -> np.ndarray:
        """(len(values) + 1, n_bins): row i holds the bin counts of values[:i]."""
        onehot = np.zeros((len(values) + 1, self.n_bins + 1), dtype=np.int32)
        onehot[np.arange(1, len(values) + 1), self.index(values)] = 1
        return np.cumsum(onehot, axis=0)[:, : self.n_bins]


def _ks_from_counts(sample: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """KS distance on the bin grid; counts in the last axis, NaN where a sample is empty."""
    n_s = sample.sum(axis=-1, keepdims=True)
    n_r = reference.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(np.cumsum(sample, axis=-1) / n_s - np.cumsum(reference, axis=-1) / n_r)
    out = gap.max(axis=-1)
    return np.where((n_s[..., 0] > 0) & (n_r[..., 0] > 0), out, np.nan)


def _psi_from_counts(sample: np.ndarray, reference: np.ndarray) -> np.ndarray:
    n_s = sample.sum(axis=-1, keepdims=True)
    n_r = reference.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_s = np.maximum(sample / n_s, PSI_EPSILON)
        p_r = np.maximum(reference / n_r, PSI_EPSILON)
        out = np.sum((p_s - p_r) * np.log(p_s / p_r), axis=-1)
    return np.where((n_s[..., 0] > 0) & (n_r[..., 0] > 0), out, np.nan)


# --------------------------------------------------------------------------------------------------
# The block null
# --------------------------------------------------------------------------------------------------


def trailing_windows(window_bars: int) -> tuple[int, ...]:
    """The window lengths a recent window of `window_bars` bars is judged by: its trailing parts, itself."""
    return tuple(sorted({w for w in TRAILING_WINDOWS_BARS if w < window_bars} | {window_bars}))


def _bar_ms(ts: np.ndarray) -> int:
    steps = np.diff(np.unique(ts))
    if steps.size == 0:
        raise ValueError("drift needs at least two distinct bar times (ts) in the reference")
    return int(steps.min())


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], which: str) -> None:
    missing = [c for c in ["ts", *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"drift inputs lack columns: {missing} (in the {which} frame)")


# Statistics of the family, in the order of the null's second axis: the KS distance of the window from
# the reference, and the size of the shift of its mean log |value| (dispersion columns only).
DISTRIBUTION, SCALE, CHANGE = 0, 1, 2
STATISTICS = ("distribution", "scale", "change")
# Statistics are standardised by their null spread; a spread below this (a near-constant column) is
# rounding, and would let a trivial difference dominate the family's maximum.
MIN_NULL_SPREAD = 0.01
# The spread is read where the decision is taken, in the null's upper tail: (q − median) / the normal's
# quantile at q, for q = 0.90, 0.95 and 0.99, the widest of the three. An IQR would let a statistic with a
# heavy tail — the scale of a volatility column, whose null holds the simulator's and the market's
# turbulent spells — dominate every null window's maximum and so raise the bar for every other test.
# One quantile is not enough either: a shift shared by every symbol (`common_shift`) is 0 whenever the
# symbols disagree in sign, which with four symbols is most windows, so its 90th percentile can sit on
# that point mass. Read there alone its spread is the floor, any shared shift is tens of spreads, and
# those statistics' null maxima set the family's bar at 9–25 (measured, four symbols): a ×2 volume level
# then went unflagged for over 14 days in most seeds. The widest reading finds the spread where the
# statistic has one.
SPREAD_QUANTILES = np.array([0.9, 0.95, 0.99])
_NORMAL_QUANTILES = np.array([1.2816, 1.6449, 2.3263])


def _null_scale(null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, upper-tail spread) of a null (windows, …), element-wise over the other axes."""
    if null.shape[0] == 0:  # no stretch fits the reference: `test` reports "undetermined", reads neither
        return np.full(null.shape[1:], math.nan), np.full(null.shape[1:], MIN_NULL_SPREAD)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a statistic that does not apply: all NaN
        quantiles = np.nanquantile(null, [0.5, *SPREAD_QUANTILES], axis=0)
        median = quantiles[0]
        readings = (quantiles[1:] - median) / _NORMAL_QUANTILES.reshape((-1,) + (1,) * median.ndim)
        widest = np.nanmax(readings, axis=0)
    return median, np.maximum(np.nan_to_num(widest, nan=MIN_NULL_SPREAD), MIN_NULL_SPREAD)


def _null_max_z(null_stat: np.ndarray, median: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Each null window's largest standardised statistic over the family: the Westfall–Young max-T null."""
    if null_stat.shape[0] == 0:  # a reference too short for one stretch: `test` reports "undetermined"
        return np.empty(0)
    z = ((null_stat - median) / spread).reshape(null_stat.shape[0], -1)
    return np.where(np.isfinite(z), z, -np.inf).max(axis=1)


def _log_size(values: np.ndarray, floor: float) -> np.ndarray:
    """log max(|value|, floor); NaN where the value is not finite."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(values), np.log(np.maximum(np.abs(values), floor)), np.nan)


def common_shift(shifts: np.ndarray) -> np.ndarray:
    """The shift every symbol shares (last axis): the smallest in size when all agree in sign, else 0.

    A volatility change of the market moves every symbol's scale; one symbol's own turbulent spell
    moves one. Symbols' spells are far less often simultaneous than any one symbol's, so the shared
    part is what tells a market-wide change from the reference's ordinary turbulence within days.
    NaN (a symbol absent from a window) is left out; all NaN gives NaN.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN is the answer
        low, high = np.nanmin(shifts, axis=-1), np.nanmax(shifts, axis=-1)
    return np.where(low > 0, low, np.where(high < 0, high, np.where(np.isnan(low), np.nan, 0.0)))


def _symbol_groups(frame: pl.DataFrame) -> tuple[tuple[str, ...], np.ndarray]:
    """Symbols and each row's symbol index; one unnamed group when the frame has no `symbol` column."""
    if "symbol" not in frame.columns:
        return ("",), np.zeros(frame.height, dtype=np.int64)
    names = tuple(sorted(frame["symbol"].unique().to_list()))
    index = {name: g for g, name in enumerate(names)}
    return names, np.array([index[name] for name in frame["symbol"].to_list()], dtype=np.int64)


def _scale_and_change(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean log |value| of each trailing part (axis −3: scales, the whole window last), and the change
    within the window: a part's mean minus the mean of the rest of the window before it (NaN for the
    whole window, which has no rest). A change of volatility a few days ago is a step inside the
    window, seen whatever the level before it was — also where that level was the reference's calm."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
        whole_sum, whole_n = sums[..., -1:, :, :], counts[..., -1:, :, :]
        change = means - (whole_sum - sums) / (whole_n - counts)
    change[..., -1, :, :] = math.nan
    return means, change


def _size_floor(finite: np.ndarray) -> float:
    magnitude = np.abs(finite)
    positive = magnitude[magnitude > 0]
    return LOG_FLOOR_SHARE * float(np.median(positive)) if positive.size else 1.0


@dataclass(frozen=True)
class ReferenceNull:
    """The reference cut into stretches shaped like the recent window: the null it is ranked in.

    Built once per (reference, window length) by `fit_reference_null`; `test` then judges any number of
    recent windows of that length against it (the benchmark judges months of days with one).
    """

    columns: tuple[str, ...]
    window_bars: int
    scales: tuple[int, ...]  # trailing window lengths, the whole window last
    bar_ms: int
    binnings_fine: tuple[_Binning, ...]
    binnings_coarse: tuple[_Binning, ...]
    reference_fine: tuple[np.ndarray, ...]  # per column: bin counts of the whole reference
    reference_coarse: tuple[np.ndarray, ...]
    reference_means: tuple[float, ...]
    n_reference: tuple[int, ...]
    size_floors: tuple[float | None, ...]  # per column: the |value| floor of its log, None: no scale test
    symbols: tuple[str, ...]  # the reference's symbols, each with its own scale centre
    null_stat: np.ndarray  # (windows, statistics, scales, columns); NaN where a statistic does not apply
    null_psi: np.ndarray  # (windows, scales, columns)
    scale_center: np.ndarray  # (scales, columns, symbols): the null windows' median mean log |value|
    change_center: np.ndarray  # (scales, columns, symbols): their median change within the window
    # (statistics, scales, columns): each statistic's null median and upper-tail spread (`_null_scale`),
    # read once here rather than by every `test` of a recent window
    null_median: np.ndarray
    null_spread: np.ndarray
    null_max_z: np.ndarray  # (windows,) largest standardised statistic of each window over the family
    reference_days: float

    @property
    def n_windows(self) -> int:
        return int(self.null_stat.shape[0])

    def test(
        self,
        current: pl.DataFrame,
        feature_columns: Sequence[str],
        label_column: str | None,
        alpha: float = DEFAULT_ALPHA,
        ks_floor: float = 0.1,
        psi_floor: float = 0.2,
        scale_floor: float = 0.25,
    ) -> DriftReport:
        """Judge `current` (rows with `ts` and the columns; every symbol, at most `window_bars` bars)."""
        wanted = [*feature_columns, *([label_column] if label_column else [])]
        unknown = [c for c in wanted if c not in self.columns]
        if unknown:
            raise ValueError(f"columns {unknown} were not in the reference null (fit with {self.columns})")
        _require_columns(current, wanted, "current")
        if current.height == 0:
            raise ValueError("drift needs a non-empty current window")
        ts = current["ts"].to_numpy()
        span = int((ts.max() - ts.min()) // self.bar_ms) + 1
        if span > self.window_bars:
            raise ValueError(
                f"the current window spans {span} bars but the null was fit for {self.window_bars}"
            )
        end = int(ts.max()) + self.bar_ms
        parts = [ts >= end - length * self.bar_ms for length in self.scales]

        position = [self.columns.index(c) for c in wanted]
        symbol_of = _current_symbols(current, self.symbols)
        n_scales = len(self.scales)
        stat = np.full((len(STATISTICS), n_scales, len(wanted)), math.nan)
        psi = np.full((n_scales, len(wanted)), math.nan)
        shift = np.full((n_scales, len(wanted)), math.nan)  # mean log |value| − the null's median
        change = np.full((n_scales, len(wanted)), math.nan)  # the step inside the window, likewise
        sums = np.zeros((n_scales, 1, len(self.symbols)))
        counts = np.zeros_like(sums)
        means, sizes = [], []
        for j, (column, i) in enumerate(zip(wanted, position, strict=True)):
            values = current[column].to_numpy().astype(float)
            finite = _finite(values)
            if finite.size < 2:
                raise ValueError(
                    f"drift on {column!r} needs at least 2 finite values in the current window "
                    f"(it has {finite.size})"
                )
            floor = self.size_floors[i]
            log_size = None if floor is None else _log_size(values, floor)
            by_symbol = [symbol_of == g for g in range(len(self.symbols))]
            for s, in_part in enumerate(parts):
                part = values[in_part]
                stat[DISTRIBUTION, s, j] = _ks_from_counts(
                    self.binnings_fine[i].counts(part), self.reference_fine[i]
                )
                psi[s, j] = _psi_from_counts(self.binnings_coarse[i].counts(part), self.reference_coarse[i])
                if log_size is not None:
                    for g, mine in enumerate(by_symbol):
                        logs = log_size[in_part & mine]
                        logs = logs[np.isfinite(logs)]
                        sums[s, 0, g], counts[s, 0, g] = logs.sum(), logs.size
            if log_size is not None:
                means_now, change_now = _scale_and_change(sums, counts)
                shift[:, j] = common_shift(means_now[:, 0] - self.scale_center[:, i])
                change[:, j] = common_shift(change_now[:, 0] - self.change_center[:, i])
                stat[SCALE, :, j], stat[CHANGE, :, j] = np.abs(shift[:, j]), np.abs(change[:, j])
            means.append(float(finite.mean()))
            sizes.append(int(finite.size))

        null_stat = self.null_stat[..., position]
        null_psi = self.null_psi[..., position]
        determined = self.n_windows >= MIN_NULL_WINDOWS
        p = p_adj = ks_median = psi_median = None
        z = np.full(stat.shape, -np.inf)
        if determined:
            valid = np.isfinite(null_stat)
            # A statistic that cannot be read (an empty trailing part) counts as no evidence (p = 1).
            p = np.where(
                np.isfinite(stat),
                (1 + np.sum(valid & (null_stat >= stat[None]), axis=0)) / (1 + valid.sum(axis=0)),
                1.0,
            )
            everything = position == list(range(len(self.columns)))
            median, spread = self.null_median[..., position], self.null_spread[..., position]
            max_z = self.null_max_z if everything else _null_max_z(null_stat, median, spread)
            z = np.where(np.isfinite(stat), (stat - median) / spread, -np.inf)
            p_adj = (1 + np.sum(max_z[:, None, None, None] >= z[None], axis=0)) / (1 + max_z.size)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ks_median = np.nanmedian(null_stat[:, DISTRIBUTION], axis=0)
                psi_median = np.nanmedian(null_psi, axis=0)

        results = []
        tests = [(k, s) for k in range(len(STATISTICS)) for s in range(n_scales)]
        for j, column in enumerate(wanted):
            drifted_at: list[tuple[int, int]] = []
            if p_adj is not None and ks_median is not None and psi_median is not None:
                big = {
                    DISTRIBUTION: (stat[DISTRIBUTION, :, j] - ks_median[:, j] >= ks_floor)
                    | (psi[:, j] - psi_median[:, j] >= psi_floor),
                    SCALE: np.abs(np.nan_to_num(shift[:, j])) >= scale_floor,
                    CHANGE: np.abs(np.nan_to_num(change[:, j])) >= scale_floor,
                }
                drifted_at = [(k, s) for k, s in tests if p_adj[k, s, j] <= alpha and big[k][s]]
            if p_adj is not None:
                # The strongest evidence: the smallest adjusted p, then (p-values tie at 1 / (windows + 1)
                # beyond the null's range) the largest standardised statistic, then the longer window.
                best_k, best = min(
                    drifted_at or tests, key=lambda t: (p_adj[t[0], t[1], j], -z[t[0], t[1], j], -t[1])
                )
            else:
                best_k, best = DISTRIBUTION, n_scales - 1  # undetermined: show the whole window
            results.append(
                FeatureDrift(
                    feature=column,
                    ks_statistic=_or_nan(stat[DISTRIBUTION, best, j]),
                    p_value=None if p is None else float(p[best_k, best, j]),
                    p_value_adjusted=None if p_adj is None else float(p_adj[best_k, best, j]),
                    psi=_or_nan(psi[best, j]),
                    ks_null_median=None if ks_median is None else _or_none(ks_median[best, j]),
                    psi_null_median=None if psi_median is None else _or_none(psi_median[best, j]),
                    reference_mean=self.reference_means[position[j]],
                    current_mean=means[j],
                    n_reference=self.n_reference[position[j]],
                    n_current=sizes[j],
                    drifted=bool(drifted_at),
                    window_bars=self.scales[best],
                    evidence=STATISTICS[best_k] if p_adj is not None else "",
                    log_scale_shift=_or_none(shift[best, j]),
                    log_scale_change=_or_none(change[best, j]),
                )
            )
        features = results[: len(feature_columns)]
        undetermined = None
        if not determined:
            undetermined = (
                f"the reference spans {self.reference_days:.1f} days: {self.n_windows} windows of "
                f"{self.window_bars} bars fit in it, fewer than the {MIN_NULL_WINDOWS} a calibrated "
                "verdict needs; train on a longer window"
            )
        return DriftReport(
            features=features,
            label=results[-1] if label_column else None,
            alpha=alpha,
            ks_floor=ks_floor,
            psi_floor=psi_floor,
            scale_floor=scale_floor,
            drifted_features=[f.feature for f in features if f.drifted],
            window_bars=self.window_bars,
            trailing_windows_bars=self.scales[:-1],
            n_null_windows=self.n_windows,
            family_p_value=None if p_adj is None else float(p_adj.min()),
            undetermined=undetermined,
        )


def _current_symbols(current: pl.DataFrame, symbols: tuple[str, ...]) -> np.ndarray:
    """Each current row's index in the reference's symbols; −1 for a symbol the reference lacks."""
    if "symbol" not in current.columns:
        return np.zeros(current.height, dtype=np.int64)
    index = {name: g for g, name in enumerate(symbols)}
    return np.array([index.get(name, -1) for name in current["symbol"].to_list()], dtype=np.int64)


def _or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _or_nan(value: float) -> float:
    return float(value) if math.isfinite(value) else math.nan


def fit_reference_null(
    reference: pl.DataFrame,
    columns: Sequence[str],
    window_bars: int,
    stride_bars: int = NULL_STRIDE_BARS,
    guard_bars: int = GUARD_BARS,
) -> ReferenceNull:
    """Cut `reference` (rows with `ts`, any number of symbols) into stretches of `window_bars` bars."""
    if window_bars < 1:
        raise ValueError(f"window_bars must be ≥ 1, got {window_bars}")
    _require_columns(reference, columns, "reference")
    frame = reference.sort("ts")
    ts = frame["ts"].to_numpy()
    bar_ms = _bar_ms(ts)
    grid = (ts - ts[0]) // bar_ms
    n_bars = int(grid[-1]) + 1
    scales = trailing_windows(window_bars)
    # A short reference cannot spare LOOKBACK_BARS either side of a window: shrink the guard so that at
    # least about half of the reference is left to compare each window with.
    guard = int(min(guard_bars, max(0, (n_bars - window_bars) // 4)))
    ends = np.arange(n_bars, window_bars - 1, -stride_bars)[::-1]

    null_stat = np.full((ends.size, len(STATISTICS), len(scales), len(columns)), math.nan)
    null_psi = np.full((ends.size, len(scales), len(columns)), math.nan)
    symbols, symbol_of = _symbol_groups(frame)
    null_scale_sum = np.zeros((*null_psi.shape, len(symbols)))
    null_scale_n = np.zeros_like(null_scale_sum)
    zone = np.searchsorted(grid, ends - window_bars - guard), np.searchsorted(grid, ends + guard)
    stop = np.searchsorted(grid, ends)
    starts = [np.searchsorted(grid, ends - length) for length in scales]
    fine_bins, coarse_bins, ref_fine, ref_coarse, means, sizes = [], [], [], [], [], []
    size_floors: list[float | None] = []
    for c, column in enumerate(columns):
        values = frame[column].to_numpy().astype(float)
        finite = _finite(values)
        if finite.size < 2:
            raise ValueError(
                f"drift on {column!r} needs at least 2 finite values in the reference (it has {finite.size})"
            )
        fine, coarse = _Binning(finite, FINE_BINS), _Binning(finite, PSI_BINS)
        cum_fine, cum_coarse = fine.cumulative_counts(values), coarse.cumulative_counts(values)
        total_fine, total_coarse = cum_fine[-1], cum_coarse[-1]
        # Each window part is compared with the reference minus the part's whole zone (window ± guard).
        rest_fine = total_fine - (cum_fine[zone[1]] - cum_fine[zone[0]])
        rest_coarse = total_coarse - (cum_coarse[zone[1]] - cum_coarse[zone[0]])
        for s, start in enumerate(starts):
            null_stat[:, DISTRIBUTION, s, c] = _ks_from_counts(cum_fine[stop] - cum_fine[start], rest_fine)
            null_psi[:, s, c] = _psi_from_counts(cum_coarse[stop] - cum_coarse[start], rest_coarse)
        floor = _size_floor(finite) if column in DISPERSION_COLUMNS else None
        if floor is not None:
            logs = _log_size(values, floor)
            for g in range(len(symbols)):
                # Rows are in time order; a symbol's running sums count only its own rows.
                seen = np.isfinite(logs) & (symbol_of == g)
                cum_sum = np.concatenate([[0.0], np.cumsum(np.where(seen, logs, 0.0))])
                cum_n = np.concatenate([[0], np.cumsum(seen)])
                for s, start in enumerate(starts):
                    null_scale_sum[:, s, c, g] = cum_sum[stop] - cum_sum[start]
                    null_scale_n[:, s, c, g] = cum_n[stop] - cum_n[start]
        size_floors.append(floor)
        fine_bins.append(fine)
        coarse_bins.append(coarse)
        ref_fine.append(total_fine)
        ref_coarse.append(total_coarse)
        means.append(float(finite.mean()))
        sizes.append(int(finite.size))

    null_scale_mean, null_change = _scale_and_change(null_scale_sum, null_scale_n)
    scale_center, change_center = _median_over_windows(null_scale_mean), _median_over_windows(null_change)
    null_stat[:, SCALE] = np.abs(common_shift(null_scale_mean - scale_center[None]))
    null_stat[:, CHANGE] = np.abs(common_shift(null_change - change_center[None]))
    null_median, null_spread = _null_scale(null_stat)
    return ReferenceNull(
        columns=tuple(columns),
        window_bars=int(window_bars),
        scales=scales,
        bar_ms=bar_ms,
        binnings_fine=tuple(fine_bins),
        binnings_coarse=tuple(coarse_bins),
        reference_fine=tuple(ref_fine),
        reference_coarse=tuple(ref_coarse),
        reference_means=tuple(means),
        n_reference=tuple(sizes),
        size_floors=tuple(size_floors),
        symbols=symbols,
        change_center=change_center,
        null_stat=null_stat,
        null_psi=null_psi,
        scale_center=scale_center,
        null_median=null_median,
        null_spread=null_spread,
        null_max_z=_null_max_z(null_stat, null_median, null_spread),
        reference_days=n_bars * bar_ms / 86_400_000,
    )


def _median_over_windows(values: np.ndarray) -> np.ndarray:
    """Median over the first axis where any value is finite, NaN elsewhere (without the warning)."""
    out = np.full(values.shape[1:], math.nan)
    measured = np.isfinite(values).any(axis=0)
    if values.shape[0]:
        out[measured] = np.nanmedian(values[:, measured], axis=0)
    return out


def window_bars_of(current: pl.DataFrame, bar_ms: int) -> int:
    """Bars the current window spans, first to last `ts` inclusive."""
    ts = current["ts"].to_numpy()
    return int((ts.max() - ts.min()) // bar_ms) + 1


def detect_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    feature_columns: list[str] | tuple[str, ...],
    label_column: str | None = "realized_vol_24",
    alpha: float = DEFAULT_ALPHA,
    ks_floor: float = 0.1,
    psi_floor: float = 0.2,
    scale_floor: float = 0.25,
) -> DriftReport:
    """Judge `current` against same-shaped stretches of `reference` (both with `ts`; see the module doc).

    `alpha` bounds the chance that a window of a stationary market flags any feature or the label;
    `ks_floor` / `psi_floor` are the excess over a typical same-length window a distribution shift must
    reach, `scale_floor` the shift of mean log |value| (volatility-like columns) a scale change must.
    """
    columns = [*feature_columns, *([label_column] if label_column else [])]
    _require_columns(reference, columns, "reference")
    _require_columns(current, columns, "current")
    if current.height == 0:
        raise ValueError("drift needs a non-empty current window")
    bar_ms = _bar_ms(reference["ts"].to_numpy())
    null = fit_reference_null(reference, columns, window_bars_of(current, bar_ms))
    return null.test(current, feature_columns, label_column, alpha, ks_floor, psi_floor, scale_floor)
