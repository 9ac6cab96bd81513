"""The `reports` group: `daily_report`, one markdown page per day of the platform's state.

The helpers below gather what the page needs from where it lives (the data location, the registry, the
Dagster instance), each degrading to 'unknown' when its source is missing; `lib.reports` renders it.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` / `config` annotations.
import json
import time
from datetime import UTC, datetime
from typing import Any

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset
from mlflow.exceptions import MlflowException

from crypto_platform.defs.reports.config import GROUP, DailyReportConfig
from crypto_platform.lib.market.symbols import exchange_symbol_id
from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.tags import FAMILY_TAG
from crypto_platform.lib.reports import (
    ChampionInfo,
    DailyReport,
    DriftStatus,
    QualityStatus,
    ServedToday,
    SymbolFreshness,
    build_daily_report,
    report_key,
)
from crypto_platform.lib.storage import (
    OHLCV_ASSET,
    ObjectNotFoundError,
    ObjectStore,
    day_start_ms,
    list_partitions,
    partition_key,
    quality_report_keys,
    read_parquet,
)

QUALITY_KEY = AssetKey("quality_report")
TRACK_RECORD_KEY = AssetKey("forecast_track_record")


def _freshness(store: ObjectStore, symbol: str, bar_ms: int, now_ms: int) -> SymbolFreshness:
    days = list_partitions(store, OHLCV_ASSET, symbol)
    for _, day in reversed(days):  # an empty file (a day materialised with no bars) says nothing
        frame = read_parquet(store, partition_key(OHLCV_ASSET, exchange_symbol_id(symbol), day))
        if frame.height:
            last_ts = int(frame["ts"].max())
            sources = frame["source"].unique().to_list() if "source" in frame.columns else []
            return SymbolFreshness(
                symbol,
                datetime.fromtimestamp(last_ts / 1000, UTC).isoformat(timespec="minutes"),
                (now_ms - (last_ts + bar_ms)) / 3_600_000,
                ", ".join(sorted(str(s) for s in sources if s)) or None,
            )
    return SymbolFreshness(symbol, None, None)


def _quality(store: ObjectStore, symbol: str) -> QualityStatus:
    for _, day in reversed(list_partitions(store, "quality_report", symbol)):
        try:
            report = json.loads(store.read_bytes(quality_report_keys(symbol, day)[1]))
        except ObjectNotFoundError:
            continue
        return QualityStatus(
            symbol, day, report.get("status"), report.get("failed_checks") or (), report.get("warnings") or ()
        )
    return QualityStatus(symbol, None, None)


def _champion(ml: Any) -> tuple[ChampionInfo | None, str | None]:
    try:
        client = ml.client()
        champion = registry.alias_version(client, registry.CHAMPION, ml.model_name)
    except (MlflowException, OSError) as exc:
        return None, f"registry unreachable: {str(exc).splitlines()[0][:200]}"
    if champion is None:
        return None, None
    tags = champion.tags or {}
    qlike = tags.get("promotion.challenger_qlike") or tags.get("holdout_qlike")
    beats = tags.get("champion_beats_baselines")
    return (
        ChampionInfo(
            version=str(champion.version),
            family=tags.get(FAMILY_TAG, "unknown"),
            created=datetime.fromtimestamp((champion.creation_timestamp or 0) / 1000, UTC).isoformat(
                timespec="minutes"
            ),
            holdout_qlike=float(qlike) if qlike else None,
            beats_baselines=None if beats is None else beats == "True",
            data_window=tags.get("data_window"),
            last_decision=tags.get("promotion.reason"),
        ),
        None,
    )


def _drift(context: AssetExecutionContext) -> DriftStatus | None:
    event = context.instance.get_latest_materialization_event(AssetKey("feature_drift"))
    if event is None or event.asset_materialization is None:
        return None
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return DriftStatus(
        evaluated_at=datetime.fromtimestamp(event.timestamp, UTC).isoformat(timespec="minutes"),
        feature_drift=bool(meta.get("feature_drift_detected")),
        label_drift=bool(meta.get("label_drift_detected")),
        drifted_features=list(meta.get("drifted_features") or []),
        champion_version=str(meta.get("champion_version")) if meta.get("champion_version") else None,
    )


def _served(url: str, day: str) -> tuple[ServedToday | None, str | None]:
    """Rows the history DB stored during the UTC `day` (the API's and the prediction sink's)."""
    from sqlalchemy.exc import SQLAlchemyError

    from serving.core.history import HistoryReader

    start = day_start_ms(day) / 1000
    try:
        with HistoryReader(url) as reader:
            if not reader.exists:
                return None, "no history DB yet: nothing was served"
            counts = reader.counts_between(start, start + 86_400)
    except (SQLAlchemyError, OSError) as exc:
        return None, f"history DB unreadable: {str(exc).splitlines()[0][:200]}"
    return ServedToday(counts.signals, counts.ml_predictions, counts.stream_forecasts), None


def _track_record(context: AssetExecutionContext) -> str | None:
    event = context.instance.get_latest_materialization_event(TRACK_RECORD_KEY)
    if event is None or event.asset_materialization is None:
        return None
    report = event.asset_materialization.metadata.get("report")
    return str(report.value) if report is not None else None


@asset(
    name="daily_report",
    group_name=GROUP,
    deps=[QUALITY_KEY, AssetKey("model_promotion"), AssetKey("feature_drift"), TRACK_RECORD_KEY],
    required_resource_keys={"ml", "data_store"},
    kinds={"markdown"},
    description=(
        "One markdown page per day under reports/daily/<date>.md in the data location: data freshness per "
        "symbol, the latest quality result, the champion and its metrics, drift status, what was served that "
        "day (history DB) and the latest forecast track record."
    ),
)
def daily_report(context: AssetExecutionContext, config: DailyReportConfig) -> MaterializeResult:
    ml = context.resources.ml
    store = context.resources.data_store.store()
    day = config.date or datetime.now(UTC).date().isoformat()
    now_ms = int(time.time() * 1000)
    bar_ms = timeframe_ms(ml.timeframe)
    symbols = ml.selected_symbols()
    champion, champion_error = _champion(ml)
    served, served_error = _served(ml.history_db_url(), day)
    report = DailyReport(
        day=day,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        freshness=[_freshness(store, s, bar_ms, now_ms) for s in symbols],
        quality=[_quality(store, s) for s in symbols],
        champion=champion,
        champion_error=champion_error,
        drift=_drift(context),
        served=served,
        served_error=served_error,
        track_record_markdown=_track_record(context),
    )
    markdown = build_daily_report(report)
    key = report_key(day)
    store.write_bytes(key, markdown.encode("utf-8"))
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(markdown),
            "path": MetadataValue.path(store.uri(key)),
            "day": day,
        }
    )


REPORT_ASSETS = [daily_report]
