"""A code location of the market group alone, for tests that run a real dagster-daemon over it.

The same builders as crypto_platform.definitions (market definitions, resources from the settings, the
in-process executor), without the ML group: its retrain sensor is RUNNING by default and, with no
champion registered, would start training a model the moment a daemon loads the location.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from crypto_platform.defs.market import build_market_definitions
from crypto_platform.defs.resources import build_resources
from crypto_platform.settings import Settings, get_settings


def build_market_location(settings: Settings) -> Definitions:
    return Definitions.merge(
        build_market_definitions(settings),
        Definitions(resources=build_resources(settings), executor=in_process_executor),
    )


defs = build_market_location(get_settings())
