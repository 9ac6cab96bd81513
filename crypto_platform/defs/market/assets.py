"""The `market` asset group: OHLCV bars → features, plus a daily data-quality report.

All three assets share the (UTC day × symbol) partitions and a single-run backfill policy: a backfill
of a year for a symbol is one run whose assets see all 365 partition keys at once, and the hourly
refresh is one run over the new day(s) of many symbols (defs.market.run_requests). `ohlcv` turns each
symbol's contiguous range into ONE paginated fetch (⌈8760 / 1000⌉ = 9 klines requests for a year of
hourly bars, not 365 runs × 1 request), fetches the symbols concurrently (bounded by the resource's
`fetch_concurrency`, paced by the client's one rate limiter) and the IO manager splits the result
back into daily files. A symbol that cannot be fetched fails the run, naming itself, after the others
were fetched: the batch-split sensor then re-runs the others without it.

Staleness in the UI: each asset has a `code_version` (bump it when its code changes what it writes),
and `ohlcv` reports a `DataVersion` that is a fingerprint of the bars it wrote (`lib.market.coverage`),
so re-fetching unchanged bars leaves `features` and `quality_report` up to date while a repaired gap
(new bars) marks them stale. Each `ohlcv` partition also records up to which exchange time its bars
were fetched (`covered_until_ms`) and how many closed bars it misses; the hourly refresh and the
gap-repair sensor read those instead of the bars.
"""

# No `from __future__ import annotations` here: Dagster checks the `context` annotation unevaluated.
import json
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    DataVersion,
    Failure,
    MetadataValue,
    MultiPartitionsDefinition,
    Output,
    asset,
)

from crypto_platform.defs.market.checks import CheckUnit, evaluate_ohlcv_checks, ohlcv_check_specs
from crypto_platform.defs.market.partitions import (
    DayRange,
    contiguous_ranges,
    lookback_days,
    market_partition_key,
    market_partitions_def,
    previous_days_mapping,
    split_partition_key,
    symbol_for_id,
)
from crypto_platform.defs.market.run_requests import FAILED_SYMBOLS_META
from crypto_platform.defs.resources import DataStoreResource, MarketDataResource
from crypto_platform.lib.features import FEATURE_COLUMNS, LOOKBACK_BARS, READY_COLUMN, compute_features
from crypto_platform.lib.market.coverage import bars_fingerprint, day_coverage
from crypto_platform.lib.market.schema import OHLCV_COLUMNS, empty_ohlcv, find_gaps, normalize_ohlcv
from crypto_platform.lib.market.source import MarketData
from crypto_platform.lib.market.symbols import exchange_symbol_id
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe
from crypto_platform.lib.quality.checks import iso_utc
from crypto_platform.lib.quality.report import build_quality_report, render_markdown_summary
from crypto_platform.lib.storage import DAY_MS, day_start_ms, quality_report_keys
from crypto_platform.settings import Settings

GROUP = "market"
IO_MANAGER_KEY = "parquet_io_manager"
OHLCV_KEY = AssetKey("ohlcv")
# Bump when the asset's code changes what it writes for the same inputs (the UI then marks it stale).
OHLCV_CODE_VERSION = "2"
FEATURES_CODE_VERSION = "1"
QUALITY_REPORT_CODE_VERSION = "1"
# Per-partition metadata of `ohlcv` that the refresh schedule and the gap-repair sensor read.
COVERED_UNTIL_META = "covered_until_ms"
MISSING_BARS_META = "missing_bars"
_MAX_GAPS_LISTED = 50
_SYM_ID, _DAY, _POS = "__symbol_id", "__day", "__pos"


def _with_partition_columns(frame: pl.DataFrame) -> pl.DataFrame:
    ids = {s: exchange_symbol_id(s) for s in frame.get_column("symbol").unique().to_list()}
    return frame.with_columns(
        pl.col("symbol").replace_strict(ids, return_dtype=pl.String).alias(_SYM_ID),
        pl.from_epoch(pl.col("ts"), time_unit="ms").dt.date().cast(pl.String).alias(_DAY),
    )


def _targets_frame(partition_keys: list[str]) -> pl.DataFrame:
    pairs = [split_partition_key(k) for k in partition_keys]
    return pl.DataFrame(
        {_SYM_ID: [p[0] for p in pairs], _DAY: [p[1] for p in pairs]},
        schema={_SYM_ID: pl.String, _DAY: pl.String},
    )


def build_market_assets(settings: Settings) -> list[AssetsDefinition]:
    """The market assets for the symbols, start day and timeframe in `settings`."""
    partitions_def: MultiPartitionsDefinition = market_partitions_def(settings)
    timeframe = validate_timeframe(settings.timeframe)
    bar_ms = timeframe_ms(timeframe)
    features_lookback_days = lookback_days(LOOKBACK_BARS, timeframe)

    @asset(
        name="ohlcv",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        io_manager_key=IO_MANAGER_KEY,
        check_specs=ohlcv_check_specs(OHLCV_KEY),
        code_version=OHLCV_CODE_VERSION,
        kinds={"polars", "parquet"},
        description=(
            "Closed OHLCV bars per UTC day and symbol (ts = bar open, UTC ms), from the exchange via "
            "ccxt or from the seeded simulator; the `source` column and metadata say which."
        ),
    )
    def ohlcv(
        context: AssetExecutionContext, market_data: MarketDataResource
    ) -> Iterator[Output[pl.DataFrame] | AssetCheckResult]:
        if validate_timeframe(market_data.timeframe) != timeframe:
            raise Failure(
                f"market_data resource is configured for {market_data.timeframe} bars but the asset graph "
                f"(partitions, look-backs) for {timeframe}"
            )
        frames: list[pl.DataFrame] = []
        units: list[CheckUnit] = []
        sources: set[str] = set()
        gaps: list[dict[str, Any]] = []
        failures: dict[str, str] = {}
        requests = 0
        for day_range, data in _fetch_concurrently(
            market_data, contiguous_ranges(list(context.partition_keys))
        ):
            symbol = symbol_for_id(day_range.symbol_id)
            start_ms, end_ms = day_range.bounds_ms
            if isinstance(data, BaseException):
                failures[day_range.symbol_id] = f"{type(data).__name__}: {data}"
                context.log.error(f"{symbol} {day_range.first_day}..{day_range.last_day}: {data}")
                continue
            for warning in data.warnings:
                context.log.warning(warning)
            # Judged against the clock the bars were cut at (the exchange's), not the host's.
            fetched_at_ms = data.now_ms if data.now_ms is not None else market_data.now_ms()
            try:
                bars = normalize_ohlcv(
                    data.frame.select([c for c in OHLCV_COLUMNS if c in data.frame.columns])
                )
            except (ValueError, pl.exceptions.PolarsError) as exc:
                failures[day_range.symbol_id] = f"{data.source} bars cannot be read as OHLCV: {exc}"
                context.log.error(f"{symbol}: {failures[day_range.symbol_id]}")
                continue
            units.append(CheckUnit(symbol, data.frame, start_ms, end_ms, fetched_at_ms))
            range_gaps = find_gaps(bars, bar_ms)
            gaps += [
                {"symbol": symbol, "after": iso_utc(g.after_ts), "missing_bars": g.missing_bars}
                for g in range_gaps
            ]
            sources.add(data.source)
            requests += data.requests
            for day in day_range.days:
                _record_coverage(context, day, day_range.symbol_id, bars, fetched_at_ms, bar_ms)
            if range_gaps:
                # Every log line is an event-log write; a symbol's bar count and source are already on
                # its partitions' materialisations, so only what needs a look gets a line of its own.
                context.log.info(
                    f"{symbol} {day_range.first_day}..{day_range.last_day}: {bars.height} bars from "
                    f"{data.source} in {data.requests} request(s), {len(range_gaps)} gap(s)"
                )
            frames.append(
                bars.with_columns(pl.lit(symbol).alias("symbol"), pl.lit(data.source).alias("source")).select(
                    "symbol", *OHLCV_COLUMNS, "source"
                )
            )
        if failures:
            # One output covers every partition of the run, so a symbol without bars fails them all;
            # the symbols are named so the batch-split sensor (and `materialize`) can run the healthy
            # ones again without it and the failing one alone (its partitions then show as failed).
            raise Failure(
                description=(
                    f"{len(failures)} of {len(failures) + len(frames)} symbol(s) could not be fetched: "
                    + "; ".join(f"{s}: {why}" for s, why in sorted(failures.items()))[:2000]
                ),
                metadata={
                    FAILED_SYMBOLS_META: MetadataValue.json(sorted(failures)),
                    "fetched_symbols": len(frames),
                },
            )

        frame = pl.concat(frames) if frames else empty_ohlcv(with_symbol=True)
        context.log.info(
            f"{len(frames)} symbol(s): {frame.height} bars from {', '.join(sorted(sources)) or 'nowhere'} "
            f"in {requests} request(s), {len(gaps)} gap(s)"
        )
        # Run-level figures: with a single-run backfill every partition's event carries them, hence
        # the "run_" prefix; per-partition row counts and paths come from the IO manager.
        metadata: dict[str, Any] = {
            "run_rows": frame.height,
            "run_partitions": len(context.partition_keys),
            "run_sources": ", ".join(sorted(sources)),
            "run_requests": requests,
            "run_first_bar": iso_utc(int(frame["ts"].min())) if frame.height else "none",
            "run_last_bar": iso_utc(int(frame["ts"].max())) if frame.height else "none",
            "run_gaps": len(gaps),
            "run_gap_list": MetadataValue.json(gaps[:_MAX_GAPS_LISTED]),
        }
        # One data version per output (Dagster has no per-partition data version for a materialisation):
        # a one-partition run (a repair of one day) reports that partition's fingerprint; a run over
        # several days or symbols shares the fingerprint of everything it wrote, so a change in one of
        # its partitions marks all of them changed (stale downstream, never missed), and each
        # partition's own fingerprint is in its `bars_sha256` metadata.
        with warnings.catch_warnings():
            # Output(data_version=) is marked beta; it is the documented way to report a data version.
            warnings.simplefilter("ignore", BetaWarning)
            output = Output(frame, metadata=metadata, data_version=DataVersion(bars_fingerprint(frame)))
        yield output
        yield from evaluate_ohlcv_checks(OHLCV_KEY, units, timeframe)

    @asset(
        name="features",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        io_manager_key=IO_MANAGER_KEY,
        ins={"ohlcv": AssetIn(partition_mapping=previous_days_mapping(features_lookback_days))},
        code_version=FEATURES_CODE_VERSION,
        kinds={"polars", "parquet"},
        description=(
            "OHLCV rows plus the model and heuristic features (lib.features), computed per symbol over "
            f"the partitions' days and {features_lookback_days} earlier days of look-back."
        ),
    )
    def features(context: AssetExecutionContext, ohlcv: pl.DataFrame) -> Output[pl.DataFrame]:
        targets = _targets_frame(list(context.partition_keys))
        if "ts" not in ohlcv.columns:
            # Not one upstream file exists (an empty day still has a file): nothing was ever fetched.
            raise Failure("no stored ohlcv partitions for these days: materialize `ohlcv` first")
        computed = compute_features(ohlcv, timeframe)
        # Position of each row in its symbol's loaded history: rows before LOOKBACK_BARS had too little
        # history in this run to have every feature, so their nulls are warm-up, not a problem.
        computed = _with_partition_columns(computed).with_columns(
            pl.int_range(pl.len()).over("symbol").alias(_POS)
        )
        kept = computed.join(targets, on=[_SYM_ID, _DAY], how="semi")
        warm = kept.filter(pl.col(_POS) >= LOOKBACK_BARS)
        nulls = warm.select(FEATURE_COLUMNS).null_count().row(0, named=True) if warm.height else {}
        result = kept.drop(_SYM_ID, _DAY, _POS)
        empty_targets = targets.join(kept, on=[_SYM_ID, _DAY], how="anti").height
        return Output(
            result,
            metadata={
                "run_rows": result.height,
                "feature_columns": MetadataValue.json(list(FEATURE_COLUMNS)),
                "lookback_bars": LOOKBACK_BARS,
                "run_history_rows_loaded": computed.height - kept.height,
                "run_warmup_rows": kept.height - warm.height,
                "run_ready_rows": int(result.get_column(READY_COLUMN).sum()) if result.height else 0,
                "run_null_counts_after_warmup": MetadataValue.json({k: int(v) for k, v in nulls.items()}),
                "run_partitions_without_bars": empty_targets,
            },
        )

    @asset(
        name="quality_report",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        io_manager_key=IO_MANAGER_KEY,
        ins={"ohlcv": AssetIn(partition_mapping=previous_days_mapping(1))},
        code_version=QUALITY_REPORT_CODE_VERSION,
        kinds={"polars", "parquet"},
        description=(
            "Per symbol and UTC day: gaps, duplicates, OHLC violations, zero-volume bars, return and "
            "volume outliers (robust, with the previous day as context). Markdown + JSON under "
            "quality-reports/ in the data location; one summary row per partition here."
        ),
    )
    def quality_report(
        context: AssetExecutionContext, ohlcv: pl.DataFrame, data_store: DataStoreResource
    ) -> Output[pl.DataFrame]:
        store = data_store.store()
        now_ms = _now_ms()
        if ohlcv.is_empty() or "ts" not in ohlcv.columns:
            ohlcv = empty_ohlcv(with_symbol=True).with_columns(pl.lit(None, dtype=pl.String).alias("source"))
        reports = []
        rows = []
        for key in sorted(context.partition_keys):
            symbol_id, day = split_partition_key(key)
            symbol = symbol_for_id(symbol_id)
            bars = ohlcv.filter(pl.col("symbol") == symbol)
            start_ms = day_start_ms(day)
            in_day = bars.filter(pl.col("ts").is_between(start_ms, start_ms + DAY_MS, closed="left"))
            report = build_quality_report(
                in_day.select(OHLCV_COLUMNS),
                timeframe,
                now_ms,
                symbol,
                day,
                context=bars.filter(pl.col("ts") < start_ms).select(OHLCV_COLUMNS),
            )
            found = in_day.get_column("source").unique().to_list() if "source" in in_day.columns else []
            source = ", ".join(sorted(s for s in found if s)) or "none"
            markdown = report.to_markdown() + f"\nSource of the bars: **{source}**\n"
            md_key, json_key = quality_report_keys(symbol, day)
            store.write_bytes(md_key, markdown.encode("utf-8"))
            store.write_bytes(json_key, json.dumps({**report.to_dict(), "source": source}, indent=2).encode())
            context.add_asset_metadata(
                {
                    "report": MetadataValue.md(markdown),
                    "status": report.status,
                    "report_path": store.uri(md_key),
                },
                partition_key=key,
            )
            reports.append(report)
            rows.append(
                {
                    "symbol": symbol,
                    "date": day,
                    "status": report.status,
                    "passed": report.passed,
                    "failed_checks": ",".join(report.failed_checks),
                    "warnings": ",".join(report.warnings),
                    "bars": report.unique_bars,
                    "expected_bars": report.expected_rows,
                    "missing_bars": len(report.missing_ts),
                    "source": source,
                    "report_md": md_key,
                    "report_json": json_key,
                    "generated_at_ms": now_ms,
                }
            )
        summary = pl.DataFrame(rows)
        return Output(
            summary,
            metadata={
                "run_summary": MetadataValue.md(render_markdown_summary(reports)),
                "run_failing_days": sum(not r.passed for r in reports),
                "run_days_with_warnings": sum(bool(r.warnings) for r in reports),
            },
        )

    return [ohlcv, features, quality_report]


def _record_coverage(
    context: AssetExecutionContext,
    day: str,
    symbol_id: str,
    bars: pl.DataFrame,
    fetched_at_ms: int,
    bar_ms: int,
) -> None:
    """What the (day, symbol) partition should hold at the fetch time, what it holds, its fingerprint."""
    start_ms = day_start_ms(day)
    in_day = bars.filter(pl.col("ts").is_between(start_ms, start_ms + DAY_MS, closed="left"))
    coverage = day_coverage(start_ms, fetched_at_ms, bar_ms, in_day.get_column("ts"))
    context.add_asset_metadata(
        {
            COVERED_UNTIL_META: coverage.covered_until_ms,
            "covered_until": iso_utc(coverage.covered_until_ms),
            "expected_bars": coverage.expected_bars,
            MISSING_BARS_META: coverage.missing_bars,
            "bars_sha256": bars_fingerprint(in_day),
        },
        partition_key=market_partition_key(day, symbol_id),
    )


def _fetch_concurrently(
    market_data: MarketDataResource, day_ranges: list[DayRange]
) -> Iterator[tuple[DayRange, MarketData | BaseException]]:
    """Each range's bars, or the error that stopped them, fetched `market_data.fetch_concurrency` at a
    time (the client's shared limiter keeps the exchange's rate limit), yielded in the ranges' order.

    A failing symbol costs its own retry budget in its own thread; the others are fetched meanwhile.
    """
    if not day_ranges:
        return
    workers = max(1, min(market_data.fetch_concurrency, len(day_ranges)))

    def load(day_range: DayRange) -> MarketData:
        return market_data.load(symbol_for_id(day_range.symbol_id), *day_range.bounds_ms)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ohlcv-fetch") as pool:
        futures = [pool.submit(load, day_range) for day_range in day_ranges]
        for day_range, future in zip(day_ranges, futures, strict=True):
            error = future.exception()
            yield day_range, (future.result() if error is None else error)


def _now_ms() -> int:
    return int(time.time() * 1000)
