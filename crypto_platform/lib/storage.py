"""Where platform data lives: an object store over a local directory or `s3://bucket/prefix`.

The Dagster IO manager writes through this module and the API reads through it, so the key layout
below is the contract between them:

    ohlcv/symbol=BTCUSDT/date=2024-01-01.parquet        one UTC day of bars of one pair
    features/symbol=BTCUSDT/date=2024-01-01.parquet     the same rows plus feature columns
    quality_report/symbol=BTCUSDT/date=2024-01-01.parquet   one-row summary of the day's checks
    quality-reports/2024-01-01/BTCUSDT.md|.json         the full human / machine readable report

Keys always use `/`; a local store maps them onto the directory tree. S3 works with any endpoint
(AWS, MinIO, moto) through boto3's `endpoint_url`.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from crypto_platform.lib.market.schema import empty_ohlcv, normalize_ohlcv
from crypto_platform.lib.market.symbols import exchange_symbol_id, normalize_symbol
from crypto_platform.settings import get_settings

DAY_MS = 86_400_000
OHLCV_ASSET = "ohlcv"
FEATURES_ASSET = "features"
QUALITY_SUMMARY_ASSET = "quality_report"
QUALITY_REPORTS_PREFIX = "quality-reports"


class ObjectNotFoundError(FileNotFoundError):
    """A key that is not in the store."""


class ObjectStore(Protocol):
    """The few operations the platform needs from a blob store."""

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str: ...


def _clean_key(key: str) -> str:
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"invalid object key {key!r}")
    return "/".join(parts)


class LocalStore:
    """Keys as files under a root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(self.uri(key)) from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader (the API, a concurrent run) never sees half a Parquet file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        if not base.exists():
            return []
        keys = []
        for path in base.rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix):
                keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """Keys as objects under `s3://bucket/prefix`, on AWS or any S3-compatible endpoint."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any = None,
        region: str | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region  # None: the process settings' (AWS_REGION / AWS_DEFAULT_REGION)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # deferred: local-only setups never pay for importing boto3

            region = self.region or get_settings().aws_region
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=region
            )
        return self._client

    def _full(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except self.client.exceptions.NoSuchKey as exc:
            raise ObjectNotFoundError(self.uri(key)) from exc
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
            for item in page.get("Contents", []):
                keys.append(item["Key"][len(base) :])
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"


def open_store(location: str, endpoint_url: str | None = None) -> ObjectStore:
    """`data` / `/abs/dir` → LocalStore; `s3://bucket/prefix` → S3Store."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"S3 location {location!r} has no bucket")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    return LocalStore(location)


# --- Parquet --------------------------------------------------------------------------------------


def frame_to_parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def write_parquet(store: ObjectStore, key: str, frame: pl.DataFrame) -> None:
    store.write_bytes(key, frame_to_parquet_bytes(frame))


def read_parquet(store: ObjectStore, key: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(store.read_bytes(key)))


# --- key layout -----------------------------------------------------------------------------------


def partition_key(asset: str, symbol_id: str, day: str) -> str:
    """Key of one (symbol, UTC day) partition of a daily-partitioned asset."""
    return f"{asset}/symbol={symbol_id}/date={day}.parquet"


def unpartitioned_key(asset: str) -> str:
    return f"{asset}.parquet"


def ohlcv_key(symbol: str, day: str) -> str:
    return partition_key(OHLCV_ASSET, exchange_symbol_id(symbol), day)


def features_key(symbol: str, day: str) -> str:
    return partition_key(FEATURES_ASSET, exchange_symbol_id(symbol), day)


def quality_report_keys(symbol: str, day: str) -> tuple[str, str]:
    """(markdown key, JSON key) of one day's quality report."""
    base = f"{QUALITY_REPORTS_PREFIX}/{day}/{exchange_symbol_id(symbol)}"
    return f"{base}.md", f"{base}.json"


# Per-day JSON results of the ML group, named by the UTC day they describe: readers (the API's gauges, the
# UI, the daily report) take the newest by key order, which is day order.
DRIFT_PREFIX = "ml/drift"
TRACK_RECORD_PREFIX = "ml/track_record"


def drift_report_key(day: str) -> str:
    return f"{DRIFT_PREFIX}/{day}.json"


def track_record_key(day: str) -> str:
    return f"{TRACK_RECORD_PREFIX}/{day}.json"


def newest_json_key(store: ObjectStore, prefix: str) -> str | None:
    """The newest `<prefix>/<day>.json` in the store, None when there is none."""
    keys = [key for key in store.list(f"{prefix}/") if key.endswith(".json")]
    return max(keys) if keys else None


def parse_partition_key(key: str) -> tuple[str, str, str] | None:
    """`ohlcv/symbol=BTCUSDT/date=2024-01-01.parquet` → ("ohlcv", "BTCUSDT", "2024-01-01")."""
    parts = key.split("/")
    if len(parts) < 3 or not parts[-2].startswith("symbol=") or not parts[-1].startswith("date="):
        return None
    if not parts[-1].endswith(".parquet"):
        return None
    return "/".join(parts[:-2]), parts[-2][len("symbol=") :], parts[-1][len("date=") : -len(".parquet")]


def list_partitions(store: ObjectStore, asset: str, symbol: str | None = None) -> list[tuple[str, str]]:
    """Sorted (symbol id, day) pairs stored for an asset, optionally for one symbol."""
    prefix = f"{asset}/symbol={exchange_symbol_id(symbol)}/" if symbol else f"{asset}/"
    found = []
    for key in store.list(prefix):
        parsed = parse_partition_key(key)
        if parsed is not None and parsed[0] == asset:
            found.append((parsed[1], parsed[2]))
    return sorted(found)


# --- days -----------------------------------------------------------------------------------------


def day_of_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).date().isoformat()


def day_start_ms(day: str | date) -> int:
    d = date.fromisoformat(day) if isinstance(day, str) else day
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def days_between(start_ms: int, end_ms: int) -> Iterator[str]:
    """UTC days touched by [start_ms, end_ms)."""
    if end_ms <= start_ms:
        return
    current = date.fromisoformat(day_of_ms(start_ms))
    last = date.fromisoformat(day_of_ms(end_ms - 1))
    while current <= last:
        yield current.isoformat()
        current += timedelta(days=1)


def with_day_column(frame: pl.DataFrame, name: str = "date") -> pl.DataFrame:
    """Adds the UTC day (ISO string) of each bar's `ts`: the `date` partition it belongs to."""
    return frame.with_columns(
        pl.from_epoch(pl.col("ts"), time_unit="ms").dt.date().cast(pl.String).alias(name)
    )


# --- readers the API uses -------------------------------------------------------------------------


def read_partitioned(
    store: ObjectStore, asset: str, symbol: str, start_ms: int, end_ms: int
) -> tuple[pl.DataFrame | None, list[str]]:
    """Rows of `asset` for one symbol with ts in [start_ms, end_ms), and the days that had no file."""
    symbol_id = exchange_symbol_id(symbol)
    frames = []
    missing = []
    for day in days_between(start_ms, end_ms):
        key = partition_key(asset, symbol_id, day)
        try:
            frames.append(read_parquet(store, key))
        except ObjectNotFoundError:
            missing.append(day)
    frames = [f for f in frames if f.height > 0]
    if not frames:
        return None, missing
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.filter((pl.col("ts") >= start_ms) & (pl.col("ts") < end_ms)).sort("ts"), missing


def read_ohlcv(store: ObjectStore, symbol: str, start_ms: int, end_ms: int) -> pl.DataFrame:
    """Bars the pipeline stored for `symbol` with ts in [start_ms, end_ms): `symbol`, the OHLCV columns
    (typed, unique, sorted) and `source` ("exchange" / "simulated") when the files carry it.

    Days never materialised are simply absent: callers that care use `read_partitioned`, which
    also returns the missing days.
    """
    frame, _ = read_partitioned(store, OHLCV_ASSET, symbol, start_ms, end_ms)
    if frame is None:
        return empty_ohlcv(with_symbol=True)
    if "symbol" not in frame.columns:
        frame = frame.with_columns(pl.lit(normalize_symbol(symbol)).alias("symbol"))
    bars = normalize_ohlcv(frame)
    if "source" in frame.columns:
        # normalize_ohlcv keeps only the OHLCV columns; the source label travels with each bar.
        sources = frame.select("ts", "source").unique("ts", keep="last")
        bars = bars.join(sources, on="ts", how="left", maintain_order="left")
    return bars
