"""Data-quality checks of the `ohlcv` asset, evaluated inside the asset from `lib.quality.checks`.

They are declared as `check_specs` on the asset (not separate @asset_check ops) because they judge
the bars as the source delivered them, before storage normalises them, and because a blocking check
must gate `features` in the same run: schema, OHLC consistency and uniqueness are blocking with
severity ERROR; continuity (real history has outage gaps) and freshness only WARN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue

from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.quality import checks

BLOCKING_CHECKS: tuple[str, ...] = ("schema", "ohlc_consistency", "uniqueness")
WARNING_CHECKS: tuple[str, ...] = ("continuity", "freshness")
OHLCV_CHECKS: tuple[str, ...] = BLOCKING_CHECKS + WARNING_CHECKS

_DESCRIPTIONS = {
    "schema": "Columns and types are the OHLCV schema (ts Int64 ms, prices and volume Float64), no nulls.",
    "ohlc_consistency": "Every bar has low ≤ min(open, close) ≤ max(open, close) ≤ high, positive prices, "
    "volume ≥ 0.",
    "uniqueness": "At most one bar per timestamp, on the timeframe's grid.",
    "continuity": "No missing bars inside the range (real exchange outages show up here as a warning).",
    "freshness": "The last bar is the last closed bar before the end of the range (or before now).",
}


def ohlcv_check_specs(asset_key: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            name=name,
            asset=asset_key,
            description=_DESCRIPTIONS[name],
            blocking=name in BLOCKING_CHECKS,
        )
        for name in OHLCV_CHECKS
    ]


@dataclass(frozen=True)
class CheckUnit:
    """Bars of one symbol over one contiguous range, as the source returned them."""

    symbol: str
    frame: pl.DataFrame
    start_ms: int
    # End of the partitions' window (exclusive): a backfilled past day is complete when it reaches
    # its last bar; today's window is judged on the bars closed by `now_ms`.
    end_ms: int
    now_ms: int


def _metadata_value(value: Any) -> Any:
    if value is None:
        return MetadataValue.null()
    if isinstance(value, dict | list | tuple):
        return MetadataValue.json(value if not isinstance(value, tuple) else list(value))
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _outcomes(unit: CheckUnit, timeframe: str) -> dict[str, checks.CheckOutcome]:
    bar_ms = timeframe_ms(timeframe)
    closed_end = min(unit.end_ms, unit.now_ms // bar_ms * bar_ms)
    return {
        "schema": checks.check_schema(unit.frame),
        "ohlc_consistency": checks.check_ohlc_consistency(unit.frame),
        "uniqueness": checks.check_uniqueness(unit.frame),
        "continuity": checks.check_continuity(unit.frame, timeframe, unit.start_ms, closed_end),
        "freshness": checks.check_freshness(
            unit.frame, timeframe, unit.now_ms, expected_end_ms=unit.end_ms, expected_start_ms=unit.start_ms
        ),
    }


def evaluate_ohlcv_checks(
    asset_key: AssetKey, units: Sequence[CheckUnit], timeframe: str
) -> list[AssetCheckResult]:
    """One result per check over all units of the run; a check passes when it passes for every unit."""
    per_check: dict[str, list[tuple[str, checks.CheckOutcome]]] = {name: [] for name in OHLCV_CHECKS}
    for unit in units:
        for name, outcome in _outcomes(unit, timeframe).items():
            per_check[name].append((unit.symbol, outcome))

    results = []
    for name in OHLCV_CHECKS:
        outcomes = per_check[name]
        failed = [(symbol, o) for symbol, o in outcomes if not o.passed]
        metadata: dict[str, Any] = {
            "symbols_checked": len(outcomes),
            "failed_symbols": MetadataValue.json(sorted({s for s, _ in failed})),
        }
        # The failing units' details (or the only unit's) say what is wrong where.
        shown = failed or outcomes[:1]
        for symbol, outcome in shown[:4]:
            metadata[f"{symbol}: description"] = outcome.description
            for key, value in outcome.metadata.items():
                metadata[f"{symbol}: {key}"] = _metadata_value(value)
        results.append(
            AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=not failed,
                severity=AssetCheckSeverity.ERROR if name in BLOCKING_CHECKS else AssetCheckSeverity.WARN,
                metadata=metadata,
                description=_DESCRIPTIONS[name],
            )
        )
    return results
