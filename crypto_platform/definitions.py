"""The Dagster code location: `defs`, built from the process settings (see crypto_platform.settings).

`workspace.yaml` loads this module; `build_definitions(settings)` lets tests and the CLI build the same
graph for other settings (symbols, data location, market source) without touching the environment.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from crypto_platform.defs.market import build_market_definitions
from crypto_platform.defs.ml.assets import ML_ASSETS
from crypto_platform.defs.ml.checks import ML_ASSET_CHECKS
from crypto_platform.defs.ml.schedules import ML_JOBS, ML_SCHEDULES
from crypto_platform.defs.ml.sensors import ML_SENSORS
from crypto_platform.defs.ml.track_record import build_track_record_definitions
from crypto_platform.defs.reports.assets import REPORT_ASSETS
from crypto_platform.defs.reports.schedules import REPORT_JOBS, REPORT_SCHEDULES
from crypto_platform.defs.resources import build_resources
from crypto_platform.settings import Settings, get_settings


def build_definitions(settings: Settings) -> Definitions:
    track_record_assets, track_record_checks = build_track_record_definitions(settings.partitions_start)
    return Definitions.merge(
        build_market_definitions(settings),
        Definitions(
            assets=[*ML_ASSETS, *track_record_assets],
            asset_checks=[*ML_ASSET_CHECKS, *track_record_checks],
            jobs=ML_JOBS,
            sensors=ML_SENSORS,
            schedules=ML_SCHEDULES,
        ),
        Definitions(assets=REPORT_ASSETS, jobs=REPORT_JOBS, schedules=REPORT_SCHEDULES),
        Definitions(
            resources=build_resources(settings),
            # Steps run inside the run's own process. The default multiprocess executor starts a Python
            # process per step, each re-importing Dagster, polars and ccxt (~5 s of CPU): for a graph this
            # small, whose steps mostly wait on one another, that tripled the time of an hourly refresh.
            executor=in_process_executor,
        ),
    )


defs = build_definitions(get_settings())
