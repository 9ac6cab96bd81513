"""Feature and label drift between a reference window and recent data.

Per feature: the two-sample Kolmogorov–Smirnov statistic and p-value, and the Population Stability
Index over deciles of the reference. p-values are Benjamini–Hochberg adjusted across features.

Why an effect-size floor as well as a p-value: hourly features are autocorrelated and the samples
are large, so KS p-values are anti-conservative and tiny, harmless shifts come out "significant".
A feature counts as drifted only when its adjusted p-value is below `alpha` AND its shift is large
enough to matter (KS ≥ `ks_floor` or PSI ≥ `psi_floor`).

Label drift (realized volatility) is reported on its own: a change in the market's volatility level
is a reason to retrain, but not evidence that the inputs are broken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
from scipy import stats

PSI_BINS = 10
# Keeps ln(p/q) finite when a bin is empty in one sample.
PSI_EPSILON = 1e-4


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI = Σ (p_cur − p_ref) · ln(p_cur / p_ref) over quantile bins of the reference."""
    reference = _finite(reference)
    current = _finite(current)
    if reference.size == 0 or current.size == 0:
        raise ValueError("PSI needs non-empty reference and current samples")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        # A constant reference: any current value off that constant is a full shift.
        same = np.isclose(current, edges[0]).mean()
        p_ref = np.array([1.0, PSI_EPSILON])
        p_cur = np.array([max(same, PSI_EPSILON), max(1.0 - same, PSI_EPSILON)])
    else:
        # Open-ended outer bins so current values beyond the reference range are counted.
        inner = edges[1:-1]
        p_ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=inner.size + 1)
        p_cur = np.bincount(np.searchsorted(inner, current, side="right"), minlength=inner.size + 1)
        p_ref = np.maximum(p_ref / reference.size, PSI_EPSILON)
        p_cur = np.maximum(p_cur / current.size, PSI_EPSILON)
    return float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref)))


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (step-up, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(n)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return adjusted


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    ks_statistic: float
    p_value: float
    p_value_adjusted: float
    psi: float
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

    @property
    def feature_drift_detected(self) -> bool:
        return bool(self.drifted_features)

    @property
    def label_drift_detected(self) -> bool:
        return bool(self.label and self.label.drifted)

    def to_dict(self) -> dict:
        return {
            "feature_drift_detected": self.feature_drift_detected,
            "label_drift_detected": self.label_drift_detected,
            "drifted_features": list(self.drifted_features),
            "alpha": self.alpha,
            "ks_floor": self.ks_floor,
            "psi_floor": self.psi_floor,
            "features": [asdict(f) for f in self.features],
            "label": asdict(self.label) if self.label else None,
        }

    def to_markdown(self) -> str:
        feature_status = (
            "DETECTED in " + ", ".join(self.drifted_features) if self.drifted_features else "none"
        )
        label_status = "detected" if self.label_drift_detected else "none"
        lines = [
            f"**Feature drift:** {feature_status} · **Label drift:** {label_status}",
            "",
            f"Drifted = BH-adjusted KS p < {self.alpha} and "
            f"(KS ≥ {self.ks_floor} or PSI ≥ {self.psi_floor}).",
            "",
            "| feature | KS | p (BH) | PSI | ref mean | cur mean | drifted |",
            "|---|---:|---:|---:|---:|---:|:-:|",
        ]
        rows = [*self.features, *([self.label] if self.label else [])]
        for f in rows:
            name = f"{f.feature} (label)" if self.label is not None and f is self.label else f.feature
            lines.append(
                f"| {name} | {f.ks_statistic:.3f} | {f.p_value_adjusted:.2g} | {f.psi:.3f} | "
                f"{f.reference_mean:.4g} | {f.current_mean:.4g} | {'yes' if f.drifted else 'no'} |"
            )
        return "\n".join(lines)


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def _compare(name: str, reference: np.ndarray, current: np.ndarray) -> tuple[float, float, float, int, int]:
    ref = _finite(reference)
    cur = _finite(current)
    if ref.size < 2 or cur.size < 2:
        raise ValueError(
            f"drift on {name!r} needs at least 2 finite values in each window "
            f"(reference has {ref.size}, current has {cur.size})"
        )
    ks = stats.ks_2samp(ref, cur)
    return float(ks.statistic), float(ks.pvalue), population_stability_index(ref, cur), ref.size, cur.size


def detect_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    feature_columns: list[str] | tuple[str, ...],
    label_column: str | None = "realized_vol_24",
    alpha: float = 0.05,
    ks_floor: float = 0.1,
    psi_floor: float = 0.2,
) -> DriftReport:
    """Compare `current` with `reference` for each feature column (and the label column, separately)."""
    missing = [
        c
        for c in [*feature_columns, *([label_column] if label_column else [])]
        if c not in reference.columns or c not in current.columns
    ]
    if missing:
        raise ValueError(f"drift inputs lack columns: {missing}")

    raw = [_compare(c, reference[c].to_numpy(), current[c].to_numpy()) for c in feature_columns]
    adjusted = benjamini_hochberg(np.array([r[1] for r in raw]))
    features = []
    for column, (ks, p, psi, n_ref, n_cur), p_adj in zip(feature_columns, raw, adjusted, strict=True):
        drifted = bool(p_adj < alpha and (ks >= ks_floor or psi >= psi_floor))
        features.append(
            FeatureDrift(
                feature=column,
                ks_statistic=ks,
                p_value=p,
                p_value_adjusted=float(p_adj),
                psi=psi,
                reference_mean=float(np.nanmean(_finite(reference[column].to_numpy()))),
                current_mean=float(np.nanmean(_finite(current[column].to_numpy()))),
                n_reference=n_ref,
                n_current=n_cur,
                drifted=drifted,
            )
        )

    label = None
    if label_column:
        ks, p, psi, n_ref, n_cur = _compare(
            label_column, reference[label_column].to_numpy(), current[label_column].to_numpy()
        )
        label = FeatureDrift(
            feature=label_column,
            ks_statistic=ks,
            p_value=p,
            p_value_adjusted=p,  # a single test: nothing to correct for
            psi=psi,
            reference_mean=float(np.mean(_finite(reference[label_column].to_numpy()))),
            current_mean=float(np.mean(_finite(current[label_column].to_numpy()))),
            n_reference=n_ref,
            n_current=n_cur,
            drifted=bool(p < alpha and (ks >= ks_floor or psi >= psi_floor)),
        )
    return DriftReport(
        features=features,
        label=label,
        alpha=alpha,
        ks_floor=ks_floor,
        psi_floor=psi_floor,
        drifted_features=[f.feature for f in features if f.drifted],
    )
