"""lib.storage on a local directory: object operations, key layout, Parquet, and reading stored bars back."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from crypto_platform.lib.market.schema import OHLCV_COLUMNS
from crypto_platform.lib.storage import (
    LocalStore,
    ObjectNotFoundError,
    S3Store,
    day_start_ms,
    days_between,
    list_partitions,
    ohlcv_key,
    open_store,
    parse_partition_key,
    quality_report_keys,
    read_ohlcv,
    read_parquet,
    read_partitioned,
    write_parquet,
)

HOUR = 3_600_000


def _bars(symbol: str, start_ms: int, hours: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": [symbol] * hours,
            "ts": [start_ms + i * HOUR for i in range(hours)],
            "open": [100.0 + i for i in range(hours)],
            "high": [101.0 + i for i in range(hours)],
            "low": [99.0 + i for i in range(hours)],
            "close": [100.5 + i for i in range(hours)],
            "volume": [10.0] * hours,
        }
    )


def test_local_store_bytes_roundtrip_list_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("a/b/c.txt", b"one")
    store.write_bytes("a/b/c.txt", b"two")  # overwrite in place
    store.write_bytes("a/d.txt", b"three")
    assert store.read_bytes("a/b/c.txt") == b"two"
    assert store.exists("a/d.txt") and not store.exists("a/nope.txt")
    assert store.list("a/") == ["a/b/c.txt", "a/d.txt"]
    assert store.list("a/b") == ["a/b/c.txt"]
    # no temp files left behind by the write-then-rename
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c.txt"]
    store.delete("a/b/c.txt")
    store.delete("a/b/c.txt")  # deleting twice is not an error
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("a/b/c.txt")


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(ValueError):
        store.write_bytes("../outside.txt", b"x")
    with pytest.raises(ValueError):
        store.read_bytes("")


def test_open_store_picks_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:9000")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket", "some/prefix", "http://127.0.0.1:9000")
    assert s3.uri("ohlcv/x.parquet") == "s3://bucket/some/prefix/ohlcv/x.parquet"
    with pytest.raises(ValueError):
        open_store("s3:///no-bucket")


def test_key_layout_is_the_documented_one() -> None:
    assert ohlcv_key("BTC/USDT", "2024-01-01") == "ohlcv/symbol=BTCUSDT/date=2024-01-01.parquet"
    assert ohlcv_key("ethbtc", "2024-02-29") == "ohlcv/symbol=ETHBTC/date=2024-02-29.parquet"
    assert quality_report_keys("BTC/USDT", "2024-01-01") == (
        "quality-reports/2024-01-01/BTCUSDT.md",
        "quality-reports/2024-01-01/BTCUSDT.json",
    )
    assert parse_partition_key("features/symbol=SOLUSDT/date=2024-03-01.parquet") == (
        "features",
        "SOLUSDT",
        "2024-03-01",
    )
    assert parse_partition_key("quality-reports/2024-01-01/BTCUSDT.md") is None


def test_days_between_is_half_open_in_utc() -> None:
    start = day_start_ms("2024-02-28")
    assert list(days_between(start, start + 2 * 86_400_000)) == ["2024-02-28", "2024-02-29"]
    assert list(days_between(start + HOUR, start + 86_400_000 + HOUR)) == ["2024-02-28", "2024-02-29"]
    assert list(days_between(start, start)) == []


def test_parquet_roundtrip_keeps_schema(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    frame = _bars("BTC/USDT", day_start_ms("2024-01-01"), 5)
    write_parquet(store, "x/y.parquet", frame)
    back = read_parquet(store, "x/y.parquet")
    assert back.schema == frame.schema
    assert back.equals(frame)


def test_read_ohlcv_spans_days_and_reports_missing_ones(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    day1 = day_start_ms("2024-01-01")
    bars = _bars("BTC/USDT", day1, 48)
    for day, part in (("2024-01-01", bars.head(24)), ("2024-01-02", bars.tail(24))):
        write_parquet(store, ohlcv_key("BTC/USDT", day), part)
    # a window from 2024-01-01 12:00 to 2024-01-03 00:00 (exclusive), with 2024-01-03 never stored
    window = read_ohlcv(store, "BTCUSDT", day1 + 12 * HOUR, day1 + 72 * HOUR)
    assert window.columns[:1] == ["symbol"] and set(OHLCV_COLUMNS) <= set(window.columns)
    assert window.height == 36
    assert window["ts"].min() == day1 + 12 * HOUR and window["ts"].max() == day1 + 47 * HOUR
    assert window["ts"].is_sorted()
    _, missing = read_partitioned(store, "ohlcv", "BTC/USDT", day1, day1 + 72 * HOUR)
    assert missing == ["2024-01-03"]
    assert list_partitions(store, "ohlcv") == [("BTCUSDT", "2024-01-01"), ("BTCUSDT", "2024-01-02")]
    assert list_partitions(store, "ohlcv", "ETH/USDT") == []
    assert read_ohlcv(store, "ETH/USDT", day1, day1 + 24 * HOUR).height == 0
