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
4. p-values. A (column, scale)'s raw p-value is the recent window's rank among the null windows' KS
   distances. All columns — features and label — and scales form one family, corrected by Westfall–Young
   max-T: each KS is standardised by its null median and spread, and the adjusted p-value is the share
   of null windows whose largest standardised KS (over every column and scale) reaches it. So the chance
   that a window of a stationary market flags anything at all is `alpha`, whatever the correlation
   between columns and scales. (Min-p on ranks would need far more null windows than a year holds: with
   ~300 windows and 36 tests, about 8 % of null windows are the most extreme of all in some test.)
5. Effect-size floor. Significance alone would flag a shift of any size once the reference is long.
   The floor is on the excess over what a window of that length shows anyway: the recent KS minus the
   null windows' median KS ≥ `ks_floor`, or the same for PSI ≥ `psi_floor`. Because the typical
   same-length distance is subtracted, the floor means the same for a 1-day and a 30-day window.

Label drift (realized volatility) is judged the same way, in the same family, and reported on its own:
a change in the market's volatility level is a reason to retrain, not evidence that inputs are broken.
A reference too short to cut `MIN_NULL_WINDOWS` null windows from gives an undetermined report (no
drift flagged, the reason said) rather than a guess. `benchmarks/drift.py` measures false alarms on
the stationary simulator, detection delays of planted changes and the firing rate on real data.
"""

from __future__ import annotations

import math
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
METHOD = "same-length windows of the reference period (block null), Westfall-Young max-T"


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


@dataclass
class DriftReport:
    features: list[FeatureDrift]
    label: FeatureDrift | None
    alpha: float
    ks_floor: float
    psi_floor: float
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
            f"Westfall–Young adjusted p ≤ {self.alpha} and (KS − null median KS ≥ {self.ks_floor} or "
            f"PSI − null median PSI ≥ {self.psi_floor}). Each row shows the trailing window with the "
            "strongest evidence.",
            "",
            "| feature | window (bars) | KS | null KS (median) | p | p (adjusted) | PSI "
            "| null PSI (median) | ref mean | cur mean | drifted |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
        ]
        rows = [*self.features, *([self.label] if self.label else [])]
        for f in rows:
            name = f"{f.feature} (label)" if self.label is not None and f is self.label else f.feature
            lines.append(
                f"| {name} | {f.window_bars} | {f.ks_statistic:.3f} | {_fmt(f.ks_null_median, '.3f')} | "
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


# KS distances are standardised by their null spread; a spread below this (a near-constant column) is
# rounding, and would let a trivial difference dominate the family's maximum.
MIN_NULL_SPREAD = 0.01


def _standardise(values: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(value − null median) / null spread (IQR / 1.349) per (scale, column); null: (windows, …)."""
    with np.errstate(invalid="ignore"):
        q25, median, q75 = np.nanquantile(null, [0.25, 0.5, 0.75], axis=0)
    spread = np.maximum(np.nan_to_num((q75 - q25) / 1.349, nan=MIN_NULL_SPREAD), MIN_NULL_SPREAD)
    return (values - median) / spread


def _null_max_z(null_ks: np.ndarray) -> np.ndarray:
    """Each null window's largest standardised KS over (scale, column): the Westfall–Young max-T null."""
    if null_ks.shape[0] == 0:  # a reference too short for one stretch: `test` reports "undetermined"
        return np.empty(0)
    z = _standardise(null_ks, null_ks).reshape(null_ks.shape[0], -1)
    return np.where(np.isfinite(z), z, -np.inf).max(axis=1)


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
    null_ks: np.ndarray  # (windows, scales, columns)
    null_psi: np.ndarray
    null_max_z: np.ndarray  # (windows,) largest standardised KS over scales and columns of each window
    reference_days: float

    @property
    def n_windows(self) -> int:
        return int(self.null_ks.shape[0])

    def test(
        self,
        current: pl.DataFrame,
        feature_columns: Sequence[str],
        label_column: str | None,
        alpha: float = 0.05,
        ks_floor: float = 0.1,
        psi_floor: float = 0.2,
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
        shape = (len(self.scales), len(wanted))
        ks, psi = np.full(shape, math.nan), np.full(shape, math.nan)
        means, sizes = [], []
        for j, (column, i) in enumerate(zip(wanted, position, strict=True)):
            values = current[column].to_numpy().astype(float)
            finite = _finite(values)
            if finite.size < 2:
                raise ValueError(
                    f"drift on {column!r} needs at least 2 finite values in the current window "
                    f"(it has {finite.size})"
                )
            for s, in_part in enumerate(parts):
                part = values[in_part]
                ks[s, j] = _ks_from_counts(self.binnings_fine[i].counts(part), self.reference_fine[i])
                psi[s, j] = _psi_from_counts(self.binnings_coarse[i].counts(part), self.reference_coarse[i])
            means.append(float(finite.mean()))
            sizes.append(int(finite.size))

        null_ks = self.null_ks[:, :, position]
        null_psi = self.null_psi[:, :, position]
        determined = self.n_windows >= MIN_NULL_WINDOWS
        p = p_adj = ks_median = psi_median = None
        if determined:
            valid = np.isfinite(null_ks)
            # An empty trailing part (a gap at the end) has no KS: it counts as no evidence (p = 1).
            p = np.where(
                np.isfinite(ks),
                (1 + np.sum(valid & (null_ks >= ks[None]), axis=0)) / (1 + valid.sum(axis=0)),
                1.0,
            )
            max_z = self.null_max_z if position == list(range(len(self.columns))) else _null_max_z(null_ks)
            z = np.where(np.isfinite(ks), _standardise(ks, null_ks), -np.inf)
            p_adj = (1 + np.sum(max_z[:, None, None] >= z[None], axis=0)) / (1 + max_z.size)
            with np.errstate(invalid="ignore"):
                ks_median = np.nanmedian(null_ks, axis=0)
                psi_median = np.nanmedian(null_psi, axis=0)

        results = []
        for j, column in enumerate(wanted):
            drifted_at = []
            if p_adj is not None and ks_median is not None and psi_median is not None:
                big = (ks[:, j] - ks_median[:, j] >= ks_floor) | (psi[:, j] - psi_median[:, j] >= psi_floor)
                drifted_at = [s for s in range(len(self.scales)) if p_adj[s, j] <= alpha and big[s]]
            if drifted_at:
                best = min(drifted_at, key=lambda s: (p_adj[s, j], -s))
            elif p_adj is not None:
                best = min(range(len(self.scales)), key=lambda s: (p_adj[s, j], -s))
            else:
                best = len(self.scales) - 1  # undetermined: show the whole window
            results.append(
                FeatureDrift(
                    feature=column,
                    ks_statistic=_or_nan(ks[best, j]),
                    p_value=None if p is None else float(p[best, j]),
                    p_value_adjusted=None if p_adj is None else float(p_adj[best, j]),
                    psi=_or_nan(psi[best, j]),
                    ks_null_median=None if ks_median is None else _or_none(ks_median[best, j]),
                    psi_null_median=None if psi_median is None else _or_none(psi_median[best, j]),
                    reference_mean=self.reference_means[position[j]],
                    current_mean=means[j],
                    n_reference=self.n_reference[position[j]],
                    n_current=sizes[j],
                    drifted=bool(drifted_at),
                    window_bars=self.scales[best],
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
            drifted_features=[f.feature for f in features if f.drifted],
            window_bars=self.window_bars,
            trailing_windows_bars=self.scales[:-1],
            n_null_windows=self.n_windows,
            family_p_value=None if p_adj is None else float(p_adj.min()),
            undetermined=undetermined,
        )


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

    null_ks = np.full((ends.size, len(scales), len(columns)), math.nan)
    null_psi = np.full_like(null_ks, math.nan)
    zone = np.searchsorted(grid, ends - window_bars - guard), np.searchsorted(grid, ends + guard)
    stop = np.searchsorted(grid, ends)
    starts = [np.searchsorted(grid, ends - length) for length in scales]
    fine_bins, coarse_bins, ref_fine, ref_coarse, means, sizes = [], [], [], [], [], []
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
            null_ks[:, s, c] = _ks_from_counts(cum_fine[stop] - cum_fine[start], rest_fine)
            null_psi[:, s, c] = _psi_from_counts(cum_coarse[stop] - cum_coarse[start], rest_coarse)
        fine_bins.append(fine)
        coarse_bins.append(coarse)
        ref_fine.append(total_fine)
        ref_coarse.append(total_coarse)
        means.append(float(finite.mean()))
        sizes.append(int(finite.size))

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
        null_ks=null_ks,
        null_psi=null_psi,
        null_max_z=_null_max_z(null_ks),
        reference_days=n_bars * bar_ms / 86_400_000,
    )


def window_bars_of(current: pl.DataFrame, bar_ms: int) -> int:
    """Bars the current window spans, first to last `ts` inclusive."""
    ts = current["ts"].to_numpy()
    return int((ts.max() - ts.min()) // bar_ms) + 1


def detect_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    feature_columns: list[str] | tuple[str, ...],
    label_column: str | None = "realized_vol_24",
    alpha: float = 0.05,
    ks_floor: float = 0.1,
    psi_floor: float = 0.2,
) -> DriftReport:
    """Judge `current` against same-shaped stretches of `reference` (both with `ts`; see the module doc).

    `alpha` bounds the chance that a window of a stationary market flags any feature or the label;
    `ks_floor` / `psi_floor` are the excess over a typical same-length window a shift must reach.
    """
    columns = [*feature_columns, *([label_column] if label_column else [])]
    _require_columns(reference, columns, "reference")
    _require_columns(current, columns, "current")
    if current.height == 0:
        raise ValueError("drift needs a non-empty current window")
    bar_ms = _bar_ms(reference["ts"].to_numpy())
    null = fit_reference_null(reference, columns, window_bars_of(current, bar_ms))
    return null.test(current, feature_columns, label_column, alpha, ks_floor, psi_floor)
