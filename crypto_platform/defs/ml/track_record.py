"""`forecast_track_record`: the forecasts the platform served, scored once their 24 bars have closed.

Daily partitions: partition D scores the forecasts served at bars that opened during the last
`window_days` UTC days up to D (a rolling window; D's own day is in `daily_qlike`). The last forecast of
day D (bar 23:00) covers bars up to 23:00 of D+1, closed at 00:00 of D+2, so the partitions definition
has end_offset=-1: partition D exists from D+2 00:00 on, when everything it scores can be known. It is
materialized by declarative automation shortly after the 00:05 refresh has stored that last bar.

What it reads: the served forecasts from the history DB (`serving.core.history.HistoryReader`: the API's
ML predictions and the scorer's forecasts stored by the prediction sink), the realized volatility from
the stored `features` (lib.storage), the baselines fitted on the stored features before the window
(lib.track_record). What it writes: `ml/track_record/<D>.json` and `.png` in the data location (the API's
gauges read the JSON), the markdown and the plot as metadata.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` / `config` annotations.
import json
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    Config,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from crypto_platform.defs.ml.config import GROUP
from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.model.baselines import BASELINE_NAMES
from crypto_platform.lib.model.windows import HORIZON_BARS, SEQUENCE_LENGTH, build_windows
from crypto_platform.lib.storage import ObjectStore, day_start_ms, track_record_key
from crypto_platform.lib.track_record import (
    CHAMPION,
    TrackRecord,
    build_track_record,
    served_per_bar,
    track_record_png,
)

TRACK_RECORD_KEY = AssetKey("forecast_track_record")
# 00:15 UTC: after the hourly refresh of 00:05 has stored the bar that closed at midnight.
TRACK_RECORD_CRON = "15 0 * * *"
BASELINES_SCORED = tuple(sorted(BASELINE_NAMES))
CHECK_DESCRIPTION = (
    "WARN when the champion's live QLIKE over the track record's window is worse than the best "
    "baseline's on the same bars (a retrain reason the retrain sensor answers), or when nothing served "
    "could be scored."
)


class TrackRecordConfig(Config):
    window_days: int = Field(default=7, ge=1, le=90, description="UTC days of served forecasts scored.")
    baseline_train_days: int = Field(
        default=60, ge=7, description="UTC days of stored features before the window the baselines fit on."
    )
    tolerance: float = Field(
        default=0.0, ge=0.0, description="Relative QLIKE excess over the best baseline tolerated."
    )


@dataclass(frozen=True)
class TrackRecordInputs:
    """Where the served forecasts and the bars are, and which symbols."""

    store: ObjectStore
    history_url: str
    symbols: tuple[str, ...]
    timeframe: str = "1h"


def compute_track_record(inputs: TrackRecordInputs, day: str, config: TrackRecordConfig) -> TrackRecord:
    """The track record of partition `day`: read the served forecasts and the stored features, score."""
    from crypto_platform.defs.ml.assets import load_feature_window
    from serving.core.history import HistoryReader

    last = date.fromisoformat(day)
    first = last - timedelta(days=config.window_days - 1)
    first_bar, end_bar = day_start_ms(first), day_start_ms(last + timedelta(days=1))
    with HistoryReader(inputs.history_url) as reader:
        served = served_per_bar(reader.served_forecasts(first_bar, end_bar))
    # Baseline training days, the 48-bar input windows of the first of them, and the day after the
    # window for the targets of its last bars.
    warmup = (SEQUENCE_LENGTH + 23) // 24
    features, _ = load_feature_window(
        inputs.store,
        list(inputs.symbols),
        first - timedelta(days=config.baseline_train_days + warmup),
        last + timedelta(days=(HORIZON_BARS + 23) // 24),
    )
    windows = build_windows(features, MODEL_FEATURES, inputs.timeframe) if not features.is_empty() else None
    if windows is None or len(windows) == 0:  # no stored features: everything served is still pending
        window = first.isoformat(), last.isoformat()
        return TrackRecord(*window, served.height, 0, served.height, {}, {}, {}, [])
    return build_track_record(served, windows, first_bar, end_bar, BASELINES_SCORED)


@lru_cache(maxsize=8)
def track_record_partitions_def(partitions_start: str) -> DailyPartitionsDefinition:
    # end_offset=-1: partition D appears at D+2 00:00, when the futures of all its forecasts have closed.
    return DailyPartitionsDefinition(start_date=partitions_start, end_offset=-1, timezone="UTC")


def build_track_record_definitions(partitions_start: str) -> tuple[list, list]:
    """The asset and its check, on daily partitions starting at `partitions_start` (the market's)."""

    @asset(
        name=TRACK_RECORD_KEY.path[-1],
        group_name=GROUP,
        partitions_def=track_record_partitions_def(partitions_start),
        # Reads stored features of other days than its own (the window, the baselines' training days):
        # the dependency is shown, the data is read through lib.storage like the other ML assets.
        deps=[AssetKey("features")],
        required_resource_keys={"ml", "data_store"},
        kinds={"polars", "matplotlib"},
        # Declarative: the newest partition once a day after the midnight bar is stored. on_cron's
        # "all deps updated since the tick" part is dropped: its features days are days old by design.
        automation_condition=AutomationCondition.on_cron(TRACK_RECORD_CRON).without(
            AutomationCondition.all_deps_updated_since_cron(TRACK_RECORD_CRON)
        ),
        description=(
            "Served forecasts (API history and the scorer's, from the history DB) joined with the realized "
            "volatility of their next 24 bars from the stored features; rolling QLIKE, MSE and "
            "Mincer–Zarnowitz of the champion against every baseline on the same bars."
        ),
    )
    def forecast_track_record(context: AssetExecutionContext, config: TrackRecordConfig) -> MaterializeResult:
        ml = context.resources.ml
        store = context.resources.data_store.store()
        day = context.partition_key
        inputs = TrackRecordInputs(store, ml.history_db_url(), tuple(ml.selected_symbols()), ml.timeframe)
        record = compute_track_record(inputs, day, config)
        payload = {**record.to_dict(), "day": day, "window_days": config.window_days}
        key = track_record_key(day)
        store.write_bytes(key, json.dumps(payload, indent=2).encode())
        metadata = {
            "report": MetadataValue.md(record.to_markdown()),
            "path": MetadataValue.path(store.uri(key)),
            "n_served": record.n_served,
            "n_scored": record.n_scored,
            "n_pending": record.n_pending,
            "live_qlike": MetadataValue.json({k: _finite(s.qlike) for k, s in record.scores.items()}),
            "best_baseline": record.best_baseline or "none",
            "champion_worse_than_best_baseline": record.champion_worse_than_best_baseline(config.tolerance),
            "window": f"{record.window_start}..{record.window_end}",
            "model_versions": MetadataValue.json(record.versions),
            # level → {n, inside, coverage}: how often what happened fell inside the served intervals
            "interval_coverage": MetadataValue.json(record.interval_coverage),
        }
        png = track_record_png(record)
        if png is not None:
            plot_key = key.removesuffix(".json") + ".png"
            store.write_bytes(plot_key, png)
            metadata["plot"] = MetadataValue.path(store.uri(plot_key))
        return MaterializeResult(metadata=metadata)

    @asset_check(asset=TRACK_RECORD_KEY, name="champion_beats_baselines_live", description=CHECK_DESCRIPTION)
    def champion_beats_baselines_live(context: AssetCheckExecutionContext) -> AssetCheckResult:
        event = context.instance.get_latest_materialization_event(TRACK_RECORD_KEY)
        if event is None or event.asset_materialization is None:
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.WARN,
                description="forecast_track_record has not run",
            )
        return live_verdict({k: v.value for k, v in event.asset_materialization.metadata.items()})

    return [forecast_track_record], [champion_beats_baselines_live]


def live_verdict(meta: dict) -> AssetCheckResult:
    """The check's verdict on a track record materialization's metadata."""
    qlike = meta.get("live_qlike") or {}
    best = meta.get("best_baseline")
    worse = meta.get("champion_worse_than_best_baseline")
    details = {
        "window": str(meta.get("window")),
        "n_scored": int(meta.get("n_scored") or 0),
        "live_qlike": MetadataValue.json(qlike),
    }
    if not meta.get("n_scored") or worse is None:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description=f"no served forecast in {meta.get('window')} could be scored yet",
            metadata=details,
        )
    champion, baseline = qlike.get(CHAMPION), qlike.get(best)
    return AssetCheckResult(
        passed=not worse,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"live QLIKE over {meta.get('window')}: champion {champion:.4f} "
            f"{'WORSE than' if worse else 'better than'} the best baseline {best} {baseline:.4f}"
        ),
        metadata=details,
    )


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
