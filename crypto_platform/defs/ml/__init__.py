"""The `ml` and `reports` groups of the code location: model training, promotion, drift, automation.

Wiring (crypto_platform/definitions.py):

    Definitions(
        assets=ML_ASSETS, asset_checks=ML_ASSET_CHECKS, jobs=ML_JOBS,
        sensors=ML_SENSORS, schedules=ML_SCHEDULES, resources=ml_resources(settings),
    )

merged with the market definitions, whose `data_store` resource the ML assets also use.
"""

from __future__ import annotations

from crypto_platform.defs.ml.assets import ML_ASSETS
from crypto_platform.defs.ml.checks import ML_ASSET_CHECKS
from crypto_platform.defs.ml.resources import MLPlatformResource, ml_resources
from crypto_platform.defs.ml.schedules import ML_JOBS, ML_SCHEDULES
from crypto_platform.defs.ml.sensors import ML_SENSORS

__all__ = [
    "ML_ASSETS",
    "ML_ASSET_CHECKS",
    "ML_JOBS",
    "ML_SCHEDULES",
    "ML_SENSORS",
    "MLPlatformResource",
    "ml_resources",
]
