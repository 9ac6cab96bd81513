"""Helpers for the ML integration tests: the market + ML graph on a test instance and a real MLflow server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from crypto_platform.defs.market import build_market_definitions
from crypto_platform.defs.ml.assets import ML_ASSETS
from crypto_platform.defs.ml.checks import ML_ASSET_CHECKS
from crypto_platform.defs.ml.schedules import ML_JOBS, ML_SCHEDULES
from crypto_platform.defs.ml.sensors import ML_SENSORS
from crypto_platform.defs.ml.track_record import build_track_record_definitions
from crypto_platform.defs.reports.assets import REPORT_ASSETS
from crypto_platform.defs.reports.schedules import REPORT_JOBS, REPORT_SCHEDULES
from crypto_platform.defs.resources import MLPlatformResource, build_resources
from crypto_platform.settings import Settings
from crypto_platform_tests.integration.market_runs import market_settings
from serving.core.history import history_url


def ml_settings(data_dir: Path, tracking_uri: str, symbols: str = "BTC/USDT,ETH/USDT") -> Settings:
    return market_settings(data_dir, CRYPTO_SYMBOLS=symbols, MLFLOW_TRACKING_URI=tracking_uri)


def ml_resource(settings: Settings, model_name: str, **overrides: Any) -> MLPlatformResource:
    overrides.setdefault("history_url", history_url(settings))
    return MLPlatformResource(
        tracking_uri=settings.mlflow_tracking_uri,
        model_name=model_name,
        symbols=list(settings.symbols),
        timeframe=settings.timeframe,
        **overrides,
    )


def ml_definitions(settings: Settings, model_name: str, **resource_overrides: Any) -> Definitions:
    """Market + ML definitions as definitions.py wires them, with a test-specific registered model name."""
    resources = {
        **build_resources(settings),
        "ml": ml_resource(settings, model_name),
        **resource_overrides,
    }
    track_record_assets, track_record_checks = build_track_record_definitions(settings.partitions_start)
    return Definitions.merge(
        build_market_definitions(settings),
        Definitions(
            assets=[*ML_ASSETS, *track_record_assets, *REPORT_ASSETS],
            asset_checks=[*ML_ASSET_CHECKS, *track_record_checks],
            jobs=[*ML_JOBS, *REPORT_JOBS],
            sensors=ML_SENSORS,
            schedules=[*ML_SCHEDULES, *REPORT_SCHEDULES],
            resources=resources,
        ),
    )


def run_retrain(
    defs: Definitions, instance: DagsterInstance, end_date: str, training_days: int, **job_kwargs: Any
) -> ExecuteInProcessResult:
    """ml_retrain_job, fast selection preset, over a fixed window (deterministic data, seeds, folds)."""
    return defs.resolve_job_def("ml_retrain_job").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "trained_model": {
                    "config": {"fast": True, "training_days": training_days, "end_date": end_date}
                },
                "feature_drift": {"config": {"end_date": end_date, "current_days": 7}},
            }
        },
        raise_on_error=False,
        **job_kwargs,
    )


def asset_metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            if mat.asset_key.to_user_string() == asset:
                return {k: v.value for k, v in mat.metadata.items()}
    raise KeyError(f"{asset} was not materialized in run {result.run_id}")
