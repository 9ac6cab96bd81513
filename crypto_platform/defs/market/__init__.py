"""The `market` group of the code location: OHLCV, features, quality report, their job, the hourly
refresh schedule and the gap-repair sensor."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import Definitions

    from crypto_platform.settings import Settings

MARKET_JOB = "market_job"


def build_market_definitions(settings: Settings) -> Definitions:
    """Assets, job, schedule and sensor of the market group (resources are bound by the caller)."""
    # Imported here so that importing a submodule (the IO manager needs `partitions`) does not pull in
    # the assets, which import the resources, which import the IO manager.
    from dagster import AssetSelection, BetaWarning, Definitions, define_asset_job

    from crypto_platform.defs.k8s_tags import INGESTION_RUN_TAGS
    from crypto_platform.defs.market.assets import GROUP, build_market_assets
    from crypto_platform.defs.market.schedules import build_market_schedules
    from crypto_platform.defs.market.sensors import build_market_sensors

    job = define_asset_job(
        MARKET_JOB,
        selection=AssetSelection.groups(GROUP),
        description="OHLCV → features and the quality report for a range of days of one or more symbols.",
        run_tags=INGESTION_RUN_TAGS,
    )
    with warnings.catch_warnings():
        # backfill_policy and MultiPartitionMapping are marked beta; they are used deliberately (single-run
        # backfills, look-back across day partitions), and a warning on every load is noise.
        warnings.simplefilter("ignore", BetaWarning)
        assets = build_market_assets(settings)
    return Definitions(
        assets=assets,
        jobs=[job],
        schedules=build_market_schedules(settings, MARKET_JOB),
        sensors=build_market_sensors(settings, job),
    )
