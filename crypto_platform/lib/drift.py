"""Feature and label drift: is the recent window unusual for a window of its length in the reference?

The reference is the champion's training period (every symbol, hourly rows with `ts`); the recent
window is the last few days of the same symbols. The question asked is not "do these rows come from
the reference's distribution" — a plain two-sample KS test answers that as if the rows were independent,
and hourly features are anything but: a 7-day window of `realized_vol_720` is one month's volatility
seen 168 times, and volatility clusters for days. On the project's own stationary simulator that test
flags most features every day. The question asked here is "would a window of this length, cut from the
reference period itself, look this different from the rest of it" — like is compared with like.

Method (a block null over the reference period):

1. Bins. Per column, the reference's percentiles (`FINE_BINS`) and deciles (`PSI_BINS`). A sample's
   distance from the reference is the KS distance read on the percentile grid and the PSI on the deciles.
2. Null windows. Every stretch of the reference as long as the recent window (in bars, all symbols over
   the same calendar span, as the recent window holds them), one every `NULL_STRIDE_BARS`. Each is
   compared with the reference minus itself and `GUARD_BARS` either side, so that it is never judged
   against its own autocorrelated neighbourhood (the recent window is not in the reference either).
   The windows keep the hourly autocorrelation, the volatility clustering and the cross-symbol
   correlation of the data, which a row-level test throws away.
3. p-values. A column's p-value is the recent window's rank among the null windows' KS distances. The
   features and the label form one family, corrected by Westfall–Young min-p: the null distribution of
   the smallest p-value across columns is read from the null windows themselves (each ranked against the
   windows it does not overlap), so the chance that a window of a stationary market flags anything at
   all is `alpha`, whatever the correlation between the columns.
4. Effect-size floor. Significance alone would flag a shift of any size once the reference is long.
   The floor is on the excess over what a window of this length shows anyway: the recent KS minus the
   null windows' median KS ≥ `ks_floor`, or the same for PSI ≥ `psi_floor`. Because the typical
   same-length distance is subtracted, the floor means the same thing for a 1-day and a 30-day window.

Label drift (realized volatility) is judged the same way, in the same family, and reported on its own:
a change in the market's volatility level is a reason to retrain, not evidence that inputs are broken.
A reference too short to cut `MIN_NULL_WINDOWS` null windows from gives an undetermined report (no
drift flagged, the reason said) rather than a guess.
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
# One null window per day: windows a day apart overlap (the null is read from dependent windows, which
# is fine for its quantiles), and finer steps add cost without new information.
NULL_STRIDE_BARS = 24
# A bar's features depend on the LOOKBACK_BARS before it, so a null window's neighbours within that
# distance share bars with it: they are left out of the reference it is compared with.
GUARD_BARS = LOOKBACK_BARS
# Fewer null windows than this cannot resolve a p-value of 0.05.
MIN_NULL_WINDOWS = 20


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    ks_statistic: float
    p_value: float | None  # rank of the window's KS among the null windows'; None when undetermined
    p_value_adjusted: float | None  # Westfall–Young min-p over features and label
    psi: float
    ks_null_median: float | None  # what a window of this length typically shows
    psi_null_median: float | None
    reference_mean: float
    current_mean: float
    n_reference: int
    n_current: int
    drifted: bool


@dataclass
class DriftReport:
    features: list[FeatureDrift]
    label: FeatureDrift | None
    alpha: float
    ks_floor: float
    psi_floor: float
    drifted_features: list[str] = field(default_factory=list)
    window_bars: int = 0
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
            "method": "block null of same-length reference windows, Westfall-Young min-p",
            "feature_drift_detected": self.feature_drift_detected,
            "label_drift_detected": self.label_drift_detected,
            "drifted_features": list(self.drifted_features),
            "alpha": self.alpha,
            "ks_floor": self.ks_floor,
            "psi_floor": self.psi_floor,
            "window_bars": self.window_bars,
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
        lines += [
            f"The last {self.window_bars} bars against {self.n_null_windows} windows of the same length "
            "from the reference period. Drifted = Westfall–Young adjusted p ≤ "
            f"{self.alpha} and (KS − null median KS ≥ {self.ks_floor} or "
            f"PSI − null median PSI ≥ {self.psi_floor}).",
            "",
            "| feature | KS | null KS (median) | p | p (adjusted) | PSI | null PSI (median) "
            "| ref mean | cur mean | drifted |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
        ]
        rows = [*self.features, *([self.label] if self.label else [])]
        for f in rows:
            name = f"{f.feature} (label)" if self.label is not None and f is self.label else f.feature
            lines.append(
                f"| {name} | {f.ks_statistic:.3f} | {_fmt(f.ks_null_median, '.3f')} | "
                f"{_fmt(f.p_value, '.2g')} | {_fmt(f.p_value_adjusted, '.2g')} | {f.psi:.3f} | "
                f"{_fmt(f.psi_null_median, '.3f')} | {f.reference_mean:.4g} | {f.current_mean:.4g} | "
                f"{'yes' if f.drifted else 'no'} |"
            )
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI = Σ (p_cur − p_ref) · ln(p_cur / p_ref) over quantile bins of the reference."""
    reference = _finite(reference)
    current = _finite(current)
    if reference.size == 0 or current.size == 0:
        raise ValueError("PSI needs non-empty reference and current samples")
    inner = _inner_edges(reference, bins)
    if inner is None:
        # A constant reference: any current value off that constant is a full shift.
        same = np.isclose(current, reference[0]).mean()
        return _psi(np.array([1.0, 0.0]), np.array([same, 1.0 - same]))
    p_ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=inner.size + 1)
    p_cur = np.bincount(np.searchsorted(inner, current, side="right"), minlength=inner.size + 1)
    return _psi(p_ref / reference.size, p_cur / current.size)


def _psi(p_ref: np.ndarray, p_cur: np.ndarray) -> float:
    p_ref = np.maximum(p_ref, PSI_EPSILON)
    p_cur = np.maximum(p_cur, PSI_EPSILON)
    return float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref)))


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def _inner_edges(reference: np.ndarray, bins: int) -> np.ndarray | None:
    """Inner quantile edges of the reference (outer bins open-ended); None for a constant reference."""
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    return edges[1:-1] if edges.size >= 2 else None


class _Binning:
    """One column's percentile and decile bins, from the reference."""

    def __init__(self, reference: np.ndarray) -> None:
        finite = _finite(reference)
        self.constant = finite[0] if finite.size and np.all(finite == finite[0]) else None
        # A constant reference gets the two bins "the constant" and "anything else".
        self.fine = _inner_edges(finite, FINE_BINS) if self.constant is None else None
        self.coarse = _inner_edges(finite, PSI_BINS) if self.constant is None else None

    def _index(self, values: np.ndarray, inner: np.ndarray | None) -> tuple[np.ndarray, int]:
        """Bin of each value (non-finite values in an extra last bin that is dropped) and bin count."""
        values = np.asarray(values, dtype=float)
        if inner is None:
            n_bins = 2
            index = np.where(np.isclose(values, self.constant if self.constant is not None else 0.0), 0, 1)
        else:
            n_bins = inner.size + 1
            index = np.searchsorted(inner, values, side="right")
        return np.where(np.isfinite(values), index, n_bins), n_bins

    def index(self, values: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
        fine, n_fine = self._index(values, self.fine)
        coarse, n_coarse = self._index(values, self.coarse)
        return fine, n_fine, coarse, n_coarse


def _counts(index: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(index, minlength=n_bins + 1)[:n_bins]


def _ks_from_counts(sample: np.ndarray, reference: np.ndarray) -> float:
    n_s, n_r = sample.sum(), reference.sum()
    if n_s == 0 or n_r == 0:
        return math.nan
    return float(np.max(np.abs(np.cumsum(sample) / n_s - np.cumsum(reference) / n_r)))


def _psi_from_counts(sample: np.ndarray, reference: np.ndarray) -> float:
    n_s, n_r = sample.sum(), reference.sum()
    if n_s == 0 or n_r == 0:
        return math.nan
    return _psi(reference / n_r, sample / n_s)


def _bar_ms(ts: np.ndarray) -> int:
    steps = np.diff(np.unique(ts))
    if steps.size == 0:
        raise ValueError("drift needs at least two distinct bar times (ts) in the reference")
    return int(steps.min())


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], which: str) -> None:
    missing = [c for c in ["ts", *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"drift inputs lack columns: {missing} (in the {which} frame)")


@dataclass(frozen=True)
class ReferenceNull:
    """The reference cut into windows of one length: what such windows look like next to the rest.

    Built once per (reference, window length) by `fit_reference_null`; `test` then judges any number of
    recent windows of that length against it.
    """

    columns: tuple[str, ...]
    window_bars: int
    bar_ms: int
    binnings: tuple[_Binning, ...]
    reference_fine: tuple[np.ndarray, ...]  # per column: bin counts of the whole reference
    reference_coarse: tuple[np.ndarray, ...]
    reference_means: tuple[float, ...]
    n_reference: tuple[int, ...]
    null_ks: np.ndarray  # (windows, columns)
    null_psi: np.ndarray
    null_min_p: np.ndarray  # (windows,) smallest per-column p-value of each null window
    window_starts: np.ndarray  # (windows,) first bar of each null window, counted from the reference's
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
        """Judge `current` (rows with `ts` and the columns; every symbol over one span of bars)."""
        wanted = [*feature_columns, *([label_column] if label_column else [])]
        unknown = [c for c in wanted if c not in self.columns]
        if unknown:
            raise ValueError(f"columns {unknown} were not in the reference null (fit with {self.columns})")
        _require_columns(current, wanted, "current")
        if current.height:
            ts = current["ts"].to_numpy()
            span = int((ts.max() - ts.min()) // self.bar_ms) + 1
            if span > self.window_bars:
                raise ValueError(
                    f"the current window spans {span} bars but the null was fit for {self.window_bars}"
                )
        position = {c: i for i, c in enumerate(self.columns)}
        ks = np.full(len(wanted), math.nan)
        psi = np.full(len(wanted), math.nan)
        means, sizes = [], []
        for j, column in enumerate(wanted):
            values = current[column].to_numpy()
            finite = _finite(values)
            if finite.size < 2:
                raise ValueError(
                    f"drift on {column!r} needs at least 2 finite values in the current window "
                    f"(it has {finite.size})"
                )
            i = position[column]
            fine, n_fine, coarse, n_coarse = self.binnings[i].index(values)
            ks[j] = _ks_from_counts(_counts(fine, n_fine), self.reference_fine[i])
            psi[j] = _psi_from_counts(_counts(coarse, n_coarse), self.reference_coarse[i])
            means.append(float(finite.mean()))
            sizes.append(int(finite.size))

        columns_idx = [position[c] for c in wanted]
        null_ks = self.null_ks[:, columns_idx]
        null_psi = self.null_psi[:, columns_idx]
        determined = self.n_windows >= MIN_NULL_WINDOWS
        undetermined = None
        if not determined:
            undetermined = (
                f"the reference spans {self.reference_days:.1f} days: {self.n_windows} windows of "
                f"{self.window_bars} bars fit in it, fewer than the {MIN_NULL_WINDOWS} a calibrated "
                "verdict needs; train on a longer window"
            )
        p = p_adj = None
        ks_median = psi_median = np.full(len(wanted), math.nan)
        family_p = None
        if determined:
            valid = np.isfinite(null_ks)
            p = (1 + np.sum(valid & (null_ks >= ks[None, :]), axis=0)) / (1 + valid.sum(axis=0))
            # min-p null of the columns tested now (a subset of those fit: recompute over that subset).
            min_p = (
                self.null_min_p
                if columns_idx == list(range(len(self.columns)))
                else _null_min_p(null_ks, self.window_starts, self.window_bars)
            )
            p_adj = (1 + np.sum(min_p[None, :] <= p[:, None], axis=1)) / (1 + min_p.size)
            family_p = float(p_adj.min())
            ks_median = np.nanmedian(null_ks, axis=0)
            psi_median = np.nanmedian(null_psi, axis=0)

        results = []
        for j, column in enumerate(wanted):
            i = position[column]
            drifted = bool(
                determined
                and p_adj is not None
                and p_adj[j] <= alpha
                and (ks[j] - ks_median[j] >= ks_floor or psi[j] - psi_median[j] >= psi_floor)
            )
            results.append(
                FeatureDrift(
                    feature=column,
                    ks_statistic=float(ks[j]),
                    p_value=None if p is None else float(p[j]),
                    p_value_adjusted=None if p_adj is None else float(p_adj[j]),
                    psi=float(psi[j]),
                    ks_null_median=_or_none(ks_median[j]),
                    psi_null_median=_or_none(psi_median[j]),
                    reference_mean=self.reference_means[i],
                    current_mean=means[j],
                    n_reference=self.n_reference[i],
                    n_current=sizes[j],
                    drifted=drifted,
                )
            )
        features = results[: len(feature_columns)]
        return DriftReport(
            features=features,
            label=results[-1] if label_column else None,
            alpha=alpha,
            ks_floor=ks_floor,
            psi_floor=psi_floor,
            drifted_features=[f.feature for f in features if f.drifted],
            window_bars=self.window_bars,
            n_null_windows=self.n_windows,
            family_p_value=family_p,
            undetermined=undetermined,
        )


def _or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _null_min_p(null_ks: np.ndarray, window_starts: np.ndarray, window_bars: int) -> np.ndarray:
    """Each null window's smallest per-column p-value, ranked among the windows it does not overlap.

    Ranking a window among its overlapping neighbours (which share most of its bars, hence its KS) would
    make it look less extreme than it is and the min-p threshold too lenient.
    """
    n = null_ks.shape[0]
    apart = np.abs(window_starts[:, None] - window_starts[None, :]) >= max(window_bars, 1)
    valid = np.isfinite(null_ks)
    min_p = np.ones(n)
    for c in range(null_ks.shape[1]):
        col = null_ks[:, c]
        ge = (col[None, :] >= col[:, None]) & apart & valid[None, :, c]
        p_c = (1 + ge.sum(axis=1)) / (1 + (apart & valid[None, :, c]).sum(axis=1))
        min_p = np.minimum(min_p, np.where(valid[:, c], p_c, 1.0))
    return min_p


def fit_reference_null(
    reference: pl.DataFrame,
    columns: Sequence[str],
    window_bars: int,
    stride_bars: int = NULL_STRIDE_BARS,
    guard_bars: int = GUARD_BARS,
) -> ReferenceNull:
    """Cut `reference` (rows with `ts`, any number of symbols) into windows of `window_bars` bars."""
    if window_bars < 1:
        raise ValueError(f"window_bars must be ≥ 1, got {window_bars}")
    _require_columns(reference, columns, "reference")
    if reference.height < 2:
        raise ValueError("drift needs a reference of at least 2 rows")
    frame = reference.sort("ts")
    ts = frame["ts"].to_numpy()
    bar_ms = _bar_ms(ts)
    grid = (ts - ts[0]) // bar_ms
    n_bars = int(grid[-1]) + 1
    # A short reference cannot spare LOOKBACK_BARS either side of a window: shrink the guard so that at
    # least about half of the reference is left to compare each window with.
    guard = int(min(guard_bars, max(0, (n_bars - window_bars) // 4)))
    starts = np.arange(n_bars - window_bars, -1, -stride_bars)[::-1]

    binnings, ref_fine, ref_coarse, means, sizes = [], [], [], [], []
    indices = []
    for column in columns:
        values = frame[column].to_numpy()
        finite = _finite(values)
        if finite.size < 2:
            raise ValueError(
                f"drift on {column!r} needs at least 2 finite values in the reference (it has {finite.size})"
            )
        binning = _Binning(values)
        fine, n_fine, coarse, n_coarse = binning.index(values)
        binnings.append(binning)
        indices.append((fine, n_fine, coarse, n_coarse))
        ref_fine.append(_counts(fine, n_fine))
        ref_coarse.append(_counts(coarse, n_coarse))
        means.append(float(finite.mean()))
        sizes.append(int(finite.size))

    null_ks = np.full((starts.size, len(columns)), math.nan)
    null_psi = np.full((starts.size, len(columns)), math.nan)
    for w, start in enumerate(starts):
        a, b = np.searchsorted(grid, [start, start + window_bars])
        za, zb = np.searchsorted(grid, [start - guard, start + window_bars + guard])
        for c, (fine, n_fine, coarse, n_coarse) in enumerate(indices):
            window_fine = _counts(fine[a:b], n_fine)
            rest_fine = ref_fine[c] - _counts(fine[za:zb], n_fine)
            null_ks[w, c] = _ks_from_counts(window_fine, rest_fine)
            rest_coarse = ref_coarse[c] - _counts(coarse[za:zb], n_coarse)
            null_psi[w, c] = _psi_from_counts(_counts(coarse[a:b], n_coarse), rest_coarse)

    return ReferenceNull(
        columns=tuple(columns),
        window_bars=int(window_bars),
        bar_ms=bar_ms,
        binnings=tuple(binnings),
        reference_fine=tuple(ref_fine),
        reference_coarse=tuple(ref_coarse),
        reference_means=tuple(means),
        n_reference=tuple(sizes),
        null_ks=null_ks,
        null_psi=null_psi,
        null_min_p=_null_min_p(null_ks, starts, window_bars),
        window_starts=starts,
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
    """Judge `current` against same-length windows of `reference` (both with `ts`; see the module doc).

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
