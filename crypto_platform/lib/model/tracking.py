"""What every training run records besides its models: the data window and its fingerprint, the code
version, the request that asked for it (promotion margin, preset), and the artifact paths shared by the
writer (`selection_tracking.log_selection`) and the readers (`holdout.load_reference`, the API's evidence).

The caller owns the MLflow run (the Dagster asset gets it from dagster-mlflow) and the tracking URI.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
import polars as pl
from mlflow import MlflowClient

from crypto_platform.lib.model.tags import TIMEFRAME_TAG

# The evaluation table the API's evidence endpoint reads (now the pooled walk-forward table).
EVALUATION_JSON = "evaluation/holdout.json"
REFERENCE_FEATURES = "reference/features.parquet"  # the drift reference: feature rows trained on
# Run tags of the request that started the training (the promotion gate reads the margin back).
PROMOTION_MARGIN_TAG = "promotion_margin"
FINGERPRINT_TAG = "data_fingerprint"


def window_fingerprint(features: pl.DataFrame) -> str:
    """sha256 of a training window's content: the same rows and values give the same fingerprint, in
    whatever order they were read; any changed, added or removed value or column gives another.

    Rows are put in (symbol, ts) order and columns in name order first (reading partitions in another
    order must not change it). Each column contributes its name, dtype and values: numbers as their
    little-endian float64/int64 bytes (nulls as a separate mask), text as length-prefixed UTF-8, so
    no two different frames share a byte stream."""
    keys = [c for c in ("symbol", "ts") if c in features.columns]
    frame = features.sort(keys) if keys else features
    digest = hashlib.sha256(f"rows={frame.height}".encode())
    for name in sorted(frame.columns):
        column = frame.get_column(name)
        digest.update(f"|{name}:{column.dtype}|".encode())
        digest.update(column.is_null().to_numpy().tobytes())
        if column.dtype.is_numeric() or column.dtype == pl.Boolean:
            kind = pl.Float64 if column.dtype.is_float() else pl.Int64
            digest.update(
                column.cast(kind)
                .fill_null(0)
                .to_numpy()
                .astype(f"<{'f8' if kind == pl.Float64 else 'i8'}")
                .tobytes()
            )
        else:
            for value in column.cast(pl.String).fill_null("").to_list():
                encoded = value.encode()
                digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()


@dataclass(frozen=True)
class DataWindow:
    """What a model was trained on (run and version tags)."""

    symbols: tuple[str, ...]
    start: str  # first UTC day
    end: str  # last UTC day
    timeframe: str = "1h"
    code_version: str = "unknown"
    fingerprint: str | None = None  # `window_fingerprint` of the features trained on

    def tags(self) -> dict[str, str]:
        fingerprint = {FINGERPRINT_TAG: self.fingerprint} if self.fingerprint else {}
        return {
            **fingerprint,
            "data_window": f"{self.start}..{self.end}",
            "data_window_start": self.start,
            "data_window_end": self.end,
            "symbols": ",".join(self.symbols),
            TIMEFRAME_TAG: self.timeframe,
            "code_version": self.code_version,
        }


def code_version(override: str | None = None) -> str:
    """The git commit the code runs from: `override` (settings.code_version) if given, else `git rev-parse`,
    'unknown' outside a checkout."""
    if override:
        return override
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_training_request(asset_name: str, margin: float, fast_preset: bool, training_days: int) -> None:
    """Tag the ACTIVE run with what asked for it: the asset, the promotion margin, preset, window length."""
    mlflow.set_tags({"dagster_asset": asset_name, PROMOTION_MARGIN_TAG: f"{margin:g}"})
    mlflow.log_params({"fast_preset": fast_preset, "training_days": training_days})


def recorded_margin(client: MlflowClient, run_id: str) -> float | None:
    """The promotion margin the training run `run_id` was asked for, None when it recorded none."""
    tag = client.get_run(run_id).data.tags.get(PROMOTION_MARGIN_TAG)
    return float(tag) if tag else None
