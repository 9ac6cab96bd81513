"""Parquet IO manager over `lib.storage`, for polars frames partitioned by (UTC day, symbol).

Written here rather than taken from dagster-polars, which does not work with polars 2.x. It does only
what the market assets need:

* an output covering many partitions (a single-run backfill) is split per (symbol, day) and every
  targeted partition's file is overwritten, so re-materialising a range is idempotent; a targeted
  partition with no rows gets an empty file (materialised, nothing there) rather than no file (never
  materialised); rows outside the targeted partitions are an error, never dropped silently;
* an input spanning many partitions (look-back windows) is the concatenation of their files, and the
  requested partitions that have no file are named in the run log.

Each partition's materialisation carries its own row count, path and, for frames with a `source`
column, where its rows came from. A row's partition comes from its `symbol` column (`BTC/USDT` →
`BTCUSDT`) and from its `date` column (ISO day) if there is one, else from the UTC day of `ts`.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster import ConfigurableIOManager, DagsterInvariantViolationError, InputContext, OutputContext

from crypto_platform.defs.market.partitions import split_partition_key
from crypto_platform.lib.market.symbols import exchange_symbol_id
from crypto_platform.lib.storage import (
    ObjectNotFoundError,
    ObjectStore,
    open_store,
    partition_key,
    read_parquet,
    unpartitioned_key,
    write_parquet,
)

_SYM, _DAY = "__io_symbol_id", "__io_day"
_MAX_LISTED = 12


def _asset_name(context: InputContext | OutputContext) -> str:
    return "/".join(context.asset_key.path)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def split_by_partition(frame: pl.DataFrame, targets: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Rows of `frame` per (symbol id, day); a frame without `symbol` must target a single symbol."""
    if "symbol" in frame.columns:
        ids = {s: exchange_symbol_id(s) for s in frame.get_column("symbol").unique().to_list() if s}
        symbol_expr = pl.col("symbol").replace_strict(ids, return_dtype=pl.String, default=None)
    else:
        target_symbols = {symbol_id for symbol_id, _ in targets}
        if len(target_symbols) > 1:
            raise ValueError("a frame without a `symbol` column cannot cover several symbols' partitions")
        symbol_expr = pl.lit(next(iter(target_symbols), None), dtype=pl.String)
    if "date" in frame.columns:
        day_expr = pl.col("date").cast(pl.String)
    elif "ts" in frame.columns:
        day_expr = pl.from_epoch(pl.col("ts"), time_unit="ms").dt.date().cast(pl.String)
    else:
        raise ValueError("a partitioned frame needs a `date` or a `ts` column")
    tagged = frame.with_columns(symbol_expr.alias(_SYM), day_expr.alias(_DAY))
    parts: dict[tuple[str, str], pl.DataFrame] = {}
    for (symbol_id, day), part in tagged.partition_by([_SYM, _DAY], as_dict=True).items():
        parts[(str(symbol_id), str(day))] = part.drop(_SYM, _DAY)
    return parts


class ParquetIOManager(ConfigurableIOManager):
    """Stores polars DataFrames as Parquet under `location` (a directory or s3://bucket/prefix)."""

    location: str = "data"
    endpoint_url: str | None = None

    def store(self) -> ObjectStore:
        return open_store(self.location, self.endpoint_url)

    # --- outputs ---------------------------------------------------------------------------------
    def handle_output(self, context: OutputContext, obj: pl.DataFrame | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"ParquetIOManager stores polars DataFrames, got {type(obj).__name__}")
        store = self.store()
        asset = _asset_name(context)
        if not context.has_asset_partitions:
            key = unpartitioned_key(asset)
            write_parquet(store, key, obj)
            context.add_output_metadata({"dagster/row_count": obj.height, "path": store.uri(key)})
            return

        keys_by_target = {split_partition_key(k): k for k in context.asset_partition_keys}
        parts = split_by_partition(obj, set(keys_by_target))
        stray = sorted(set(parts) - set(keys_by_target))
        if stray:
            raise ValueError(
                f"{asset}: output has rows outside the partitions of this run: "
                + _listing([f"{day}|{symbol_id}" for symbol_id, day in stray])
            )
        for target in sorted(keys_by_target):
            symbol_id, day = target
            key = partition_key(asset, symbol_id, day)
            part = parts.get(target, obj.clear())
            write_parquet(store, key, part)
            metadata: dict[str, Any] = {"dagster/row_count": part.height, "path": store.uri(key)}
            if "source" in part.columns and part.height:
                # where the bars came from ("exchange" / "simulated"), on every partition that holds them
                metadata["source"] = ", ".join(sorted(str(s) for s in part.get_column("source").unique()))
            self._partition_metadata(context, keys_by_target[target], metadata)
        context.add_output_metadata({"partition_files_written": len(keys_by_target)})

    @staticmethod
    def _partition_metadata(context: OutputContext, partition: str, metadata: dict[str, Any]) -> None:
        """Row count and path on each partition's own materialisation event, not the run's total."""
        try:
            step_context = context.step_context
        except DagsterInvariantViolationError:
            # Contexts built by hand (build_output_context) have no step: nothing to attach to.
            context.log.debug(f"{partition}: {metadata}")
            return
        step_context.add_asset_metadata(metadata, partition_key=partition)

    # --- inputs ----------------------------------------------------------------------------------
    def load_input(self, context: InputContext) -> pl.DataFrame:
        store = self.store()
        asset = _asset_name(context)
        if not context.has_asset_partitions:
            return read_parquet(store, unpartitioned_key(asset))

        frames = []
        missing = []
        for key in sorted(context.asset_partition_keys):
            symbol_id, day = split_partition_key(key)
            try:
                frames.append(read_parquet(store, partition_key(asset, symbol_id, day)))
            except ObjectNotFoundError:
                missing.append(str(key))
        if missing:
            context.log.warning(
                f"{asset}: {len(missing)} of {len(context.asset_partition_keys)} requested partitions "
                f"have no stored file (never materialised): {_listing(missing)}"
            )
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="diagonal_relaxed")
