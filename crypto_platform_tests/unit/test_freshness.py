"""serving/api/freshness.py: pipeline freshness read from stored partitions, published as gauges."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prometheus_client import REGISTRY

from crypto_platform.lib.market.schema import empty_ohlcv
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.storage import LocalStore, ohlcv_key, partition_key, write_parquet
from serving.api.freshness import FreshnessExporter, newest_bar

HOUR_MS = 3_600_000
DAY0 = 1_748_736_000_000  # 2025-06-01T00:00Z


def _store_day(store: LocalStore, symbol: str, day: str, start_ms: int, hours: int) -> None:
    bars = simulate_ohlcv(symbol, "1h", start_ms, start_ms + hours * HOUR_MS)
    write_parquet(store, ohlcv_key(symbol, day), bars.with_columns(pl.lit(symbol).alias("symbol")))


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_newest_bar_skips_an_empty_newest_partition(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _store_day(store, "BTC/USDT", "2025-06-01", DAY0, 24)
    _store_day(store, "BTC/USDT", "2025-06-02", DAY0 + 24 * HOUR_MS, 5)
    # today's partition materialised before its first bar closed: an empty file
    write_parquet(store, partition_key("ohlcv", "BTCUSDT", "2025-06-03"), empty_ohlcv(with_symbol=True))
    found = newest_bar(store, "ohlcv", "BTC/USDT")
    assert found.last_bar_ms == DAY0 + 28 * HOUR_MS and found.stored_days == 3
    assert newest_bar(store, "features", "BTC/USDT").last_bar_ms is None


def test_refresh_publishes_gauges_and_survives_a_failing_registry(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _store_day(store, "ETH/USDT", "2025-06-01", DAY0, 10)

    def registry_down() -> int | None:
        raise ConnectionError("mlflow unreachable")

    errors_before = _sample("crypto_pipeline_freshness_errors_total", source="registry") or 0.0
    exporter = FreshnessExporter(store, ["ethusdt", "SOL/USDT"], registry_down)
    snapshot = exporter.refresh()
    assert (
        _sample("crypto_pipeline_last_bar_timestamp_seconds", asset="ohlcv", symbol="ETH/USDT")
        == (DAY0 + 9 * HOUR_MS) / 1000
    )
    assert _sample("crypto_pipeline_stored_days", asset="ohlcv", symbol="ETH/USDT") == 1
    # nothing stored for SOL: no timestamp series (stale data must not look fresh), zero days
    assert _sample("crypto_pipeline_last_bar_timestamp_seconds", asset="ohlcv", symbol="SOL/USDT") is None
    assert _sample("crypto_pipeline_stored_days", asset="ohlcv", symbol="SOL/USDT") == 0
    assert snapshot.errors and "registry" in snapshot.errors[0]
    assert _sample("crypto_pipeline_freshness_errors_total", source="registry") == errors_before + 1

    FreshnessExporter(store, ["ETH/USDT"], lambda: 1_750_000_000_000).refresh()
    assert _sample("crypto_model_champion_registered_timestamp_seconds") == 1_750_000_000
    FreshnessExporter(store, ["ETH/USDT"], lambda: None).refresh()
    assert _sample("crypto_model_champion_registered_timestamp_seconds") == 0


def test_freshness_lifetime_refreshes_in_the_background(tmp_path: Path) -> None:
    """What app.py runs beside the model poller: a refresh at start, cancelled cleanly at the end."""
    import asyncio
    from types import SimpleNamespace

    from crypto_platform.settings import Settings
    from serving.api.freshness import freshness_lifetime

    store = LocalStore(tmp_path / "data")
    _store_day(store, "BNB/USDT", "2025-06-01", DAY0, 3)
    platform = Settings(symbols=("BNB/USDT",), mlflow_tracking_uri=(tmp_path / "mlruns").as_uri())
    services = SimpleNamespace(
        settings=SimpleNamespace(platform=platform, model_name="no-such-model", model_alias="champion"),
        market=SimpleNamespace(store=store),
    )

    async def scenario() -> float | None:
        async with freshness_lifetime(services):  # type: ignore[arg-type]
            for _ in range(300):
                value = _sample(
                    "crypto_pipeline_last_bar_timestamp_seconds", asset="ohlcv", symbol="BNB/USDT"
                )
                if value is not None:
                    return value
                await asyncio.sleep(0.1)
        return None

    assert asyncio.run(scenario()) == (DAY0 + 2 * HOUR_MS) / 1000
