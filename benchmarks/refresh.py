"""Refresh cost per symbol: many symbols per run (today's design) against one run per symbol, in one process.

For each symbol count N, both designs refresh the same N replayed symbols (the simulator behind the
replay server: real HTTP, unmodified ccxt, the client's rate limiter ON as against Binance) from a
fresh Dagster instance and data directory:

- `batched`: the hourly schedule's tick with CRYPTO_REFRESH_BATCH_SYMBOLS (default 64), executed
  request by request in-process, as `crypto-platform materialize` and the daemon's runs would;
- `per_symbol` (baseline): the same tick with a batch size of 1: one run per symbol, the design
  before issue 17.

The tick is the schedule's own (`market_hourly_refresh` evaluated at `--tick`): with no stored history
it asks for the day of the last closed bar, so each symbol's run covers one partition (12 closed
bars at 12:05) through `ohlcv` → `features` → `quality_report` and the five checks. Every run must
succeed and every partition must be stored (checked). Wall time covers the runs only (definitions are
built before the clock starts; the exchange client, its markets and clock, are fresh per design and
inside the time; the replay server is warmed first, so no design pays for simulating history). Runs
execute in-process; a daemon launching each run in a new process adds its
start-up cost per run, which only widens the ratio.

Dagster's event writes are most of a batched run's cost. `--event-batch-size` (default: the value
docker-compose.yml and the Helm values deploy, DAGSTER_EVENT_BATCH_SIZE) lets a run's materialisations
of many partitions be written together: dagster-postgres does so in one INSERT per asset; Dagster's
SQLite storage writes them one by one whatever the setting. 0 = one write per event.

What a storage can reach is measured too: `event_write_ms`, the cost of one asset event written alone
on a fresh instance of the same storage (`report_runless_asset_event`: on SQLite the same write path
as a run's planned and materialisation events, each written alone there). A batched run writes at
least two such events per materialisation it reports (planned + materialised;
`asset_materialisations`), so on SQLite `2 × asset_materialisations × event_write_ms` is a floor under
its wall time that no work saved elsewhere lowers, and `ratio_ceiling_from_event_writes` (run per
symbol's wall time / that floor) the most a batched run of these assets could reach there. On
PostgreSQL the materialisations are written in batches, so that product is no floor and is not given.
The exchange adds its own floor: the client spaces klines requests by Binance's weight limit (ccxt's
`rateLimit` × the endpoint's cost: `klines_interval_ms`), and a run fetches before it writes, so
`ratio_ceiling_from_event_writes_and_fetches` also counts `klines_requests × klines_interval_ms`.

Prints one JSON document: per design and N, runs, wall seconds, seconds per symbol, asset
materialisations; per N the ratio per_symbol / batched (and on SQLite its ceiling); and the goals
(≤ 0.3 s per symbol at 64 symbols, ≥ 10× at 256).

    .venv/bin/python benchmarks/refresh.py [--sizes 4,16,64,256] [--baseline-sizes 4,16,64,256]
        [--batch 64] [--concurrency 8] [--tick 2025-06-01T12:05:00] [--storage sqlite|postgres]
        [--event-batch-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import yaml
from dagster import AssetMaterialization, BetaWarning, RunRequest, build_schedule_context, instance_for_test

# The repository first: run as a script, this folder leads sys.path and its serving.py would shadow
# the `serving` package (which the resources import).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from crypto_platform.definitions import build_definitions
from crypto_platform.devtools.replay.server import ReplayServer
from crypto_platform.lib.market.client import SUPPORTED_EXCHANGES, clear_exchange_clients
from crypto_platform.lib.market.simulator import set_simulator_cache_size
from crypto_platform.lib.market.source import reset_exchange_probe
from crypto_platform.lib.storage import LocalStore, list_partitions
from crypto_platform.settings import load_settings
from crypto_platform_tests.fixtures.servers import PostgresServer, postgres_binaries_missing, postgres_cluster

PARTITIONS_START = "2025-05-01"
DEPLOYED_EVENT_BATCH_SIZE = int(
    yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())["x-dagster-env"][
        "DAGSTER_EVENT_BATCH_SIZE"
    ]
)
GOAL_PER_SYMBOL_S_AT_64 = 0.3
GOAL_RATIO_AT_256 = 10.0


def synthetic_symbols(count: int) -> list[str]:
    """`S0001/USDT` … : simulated pairs the replay server serves like listed markets."""
    return [f"S{i:04d}/USDT" for i in range(1, count + 1)]


def _warm(server: ReplayServer, symbols: list[str], tick: datetime) -> None:
    """One klines request per symbol before any clock starts: the replay server simulates a symbol's
    history on its first request (~0.15 s) and caches it (every symbol: `set_simulator_cache_size`),
    which neither design should pay for."""
    day_start = int(tick.replace(hour=0, minute=0).timestamp() * 1000)
    for symbol in symbols:
        answer = requests.get(
            f"{server.url}/api/v3/klines",
            params={"symbol": symbol.replace("/", ""), "interval": "1h", "startTime": day_start, "limit": 24},
            timeout=30,
        )
        answer.raise_for_status()


def _instance_overrides(postgres: PostgresServer | None) -> dict[str, Any] | None:
    """Instance storage: Dagster's default SQLite files (None), or a fresh database on the cluster."""
    if postgres is None:
        return None
    database = postgres.create_database(f"refresh_{uuid.uuid4().hex[:10]}")
    return {"storage": {"postgres": {"postgres_url": database.url}}}


def _refresh(
    server: ReplayServer,
    symbols: list[str],
    batch: int,
    concurrency: int,
    tick: datetime,
    workdir: Path,
    postgres: PostgresServer | None,
) -> dict[str, Any]:
    data = workdir / "data"
    settings = load_settings(
        {
            "CRYPTO_SYMBOLS": ",".join(symbols),
            "CRYPTO_MARKET_SOURCE": "exchange",
            "CRYPTO_EXCHANGE_API_URL": server.url,
            "CRYPTO_DATA_LOCATION": str(data),
            "CRYPTO_PARTITIONS_START": PARTITIONS_START,
            "CRYPTO_REFRESH_BATCH_SYMBOLS": str(batch),
            "CRYPTO_FETCH_CONCURRENCY": str(concurrency),
        }
    )
    # Console logging at WARNING, as `crypto-platform materialize` runs (INFO lines cost time per run).
    run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with instance_for_test(overrides=_instance_overrides(postgres)) as instance:
        # Built inside: resolving the repository reads the current instance (instance_for_test's).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BetaWarning)
            defs = build_definitions(settings)
        job = defs.resolve_job_def("market_job")
        schedule = defs.resolve_schedule_def("market_hourly_refresh")
        repository = defs.get_repository_def()
        clear_exchange_clients()
        reset_exchange_probe()
        server.reset()
        started = time.perf_counter()
        with build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=repository
        ) as context:
            requests: list[RunRequest] = list(schedule.evaluate_tick(context).run_requests or [])
        failed = materialisations = 0
        for request in requests:
            result = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags=dict(request.tags),
                run_config=run_config,
                raise_on_error=False,
            )
            failed += not result.success
            materialisations += len(result.get_asset_materialization_events())
        wall_s = time.perf_counter() - started
    stored = list_partitions(LocalStore(data), "ohlcv")
    if failed or len(stored) != len(symbols):
        raise SystemExit(f"{failed} failed run(s), {len(stored)} of {len(symbols)} partitions stored")
    stats = server.stats()
    return {
        "symbols": len(symbols),
        "runs": len(requests),
        "wall_s": round(wall_s, 3),
        "per_symbol_s": round(wall_s / len(symbols), 4),
        "klines_requests": stats["requests"].get("/api/v3/klines", 0),
        # Each one has its planned event too: at least 2 asset events written per materialisation.
        "asset_materialisations": materialisations,
    }


def event_write_s(postgres: PostgresServer | None, events: int = 300) -> float:
    """Seconds to write one asset event alone on a fresh instance of the storage: the mean over `events`
    runless materialisations of distinct partitions (after 20 unmeasured ones: tables, first connects)."""
    with instance_for_test(overrides=_instance_overrides(postgres)) as instance:
        for i in range(20):
            instance.report_runless_asset_event(AssetMaterialization("warm_up", partition=f"p{i}"))
        started = time.perf_counter()
        for i in range(events):
            instance.report_runless_asset_event(
                AssetMaterialization("ohlcv", partition=f"2025-06-01|S{i:04d}USDT", metadata={"rows": 12})
            )
        return (time.perf_counter() - started) / events


def klines_interval_s() -> float:
    """The spacing the ccxt client's rate limiter keeps between two klines requests to Binance (6,000
    request weight a minute; ccxt prices the endpoint as a fraction of `rateLimit`)."""
    exchange = SUPPORTED_EXCHANGES["binance"]()
    return exchange.rateLimit * float(exchange.api["public"]["get"]["klines"]["cost"]) / 1000


def _sizes(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4,16,64,256", help="symbol counts for the batched design")
    parser.add_argument(
        "--baseline-sizes", default="4,16,64,256", help="symbol counts for one run per symbol"
    )
    parser.add_argument("--batch", type=int, default=64, help="symbols per run of the batched design")
    parser.add_argument("--concurrency", type=int, default=8, help="symbols one run fetches at a time")
    parser.add_argument("--tick", default="2025-06-01T12:05:00", help="the schedule tick (UTC)")
    parser.add_argument(
        "--storage",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="Dagster instance storage: SQLite files (the embedded setup) or a throwaway PostgreSQL 15 "
        "cluster (deploy/dagster.postgres.yaml's storage; fsync off)",
    )
    parser.add_argument(
        "--event-batch-size",
        type=int,
        default=DEPLOYED_EVENT_BATCH_SIZE,
        help="DAGSTER_EVENT_BATCH_SIZE for the runs (default: the deployed value; 0: one write per event)",
    )
    args = parser.parse_args()
    # Read by Dagster at each event, in this process: both designs run with the same setting.
    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
    tick = datetime.fromisoformat(args.tick).replace(tzinfo=UTC)
    sizes, baseline_sizes = _sizes(args.sizes), _sizes(args.baseline_sizes)
    largest = max(sizes + baseline_sizes)
    server = ReplayServer(simulate=synthetic_symbols(largest), now_ms=int(tick.timestamp() * 1000) + 60_000)
    server.start()
    # Every symbol's path stays cached (the default 32 would re-simulate evicted ones inside the timing).
    set_simulator_cache_size(max(32, largest))
    _warm(server, synthetic_symbols(largest), tick)
    results: dict[str, list[dict[str, Any]]] = {"batched": [], "per_symbol": []}
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        postgres = None
        if args.storage == "postgres":
            missing = postgres_binaries_missing()
            if missing:
                raise SystemExit(missing)
            postgres = stack.enter_context(postgres_cluster())
        for n in sorted(set(sizes) | set(baseline_sizes)):
            symbols = synthetic_symbols(n)
            for design, batch, wanted in (
                ("batched", args.batch, sizes),
                ("per_symbol", 1, baseline_sizes),
            ):
                if n not in wanted:
                    continue
                with tempfile.TemporaryDirectory(prefix="refresh-bench-") as tmp:
                    row = _refresh(server, symbols, batch, args.concurrency, tick, Path(tmp), postgres)
                results[design].append(row)
                print(f"{design} {n}: {row}", file=sys.stderr, flush=True)

        write_s = event_write_s(postgres)
        print(f"one asset event written alone: {1000 * write_s:.2f} ms", file=sys.stderr, flush=True)

    by_n = {design: {r["symbols"]: r for r in rows} for design, rows in results.items()}
    ratios = {
        n: round(by_n["per_symbol"][n]["wall_s"] / by_n["batched"][n]["wall_s"], 2)
        for n in sorted(set(by_n["batched"]) & set(by_n["per_symbol"]))
    }
    # SQLite writes every event alone: two per materialisation are a floor under a batched run's time,
    # and so, after them, are its fetches at the exchange's pace.
    interval_s = klines_interval_s()
    ceilings = ceilings_with_fetches = None
    if args.storage == "sqlite":
        writes_s = {n: 2 * by_n["batched"][n]["asset_materialisations"] * write_s for n in ratios}
        fetches_s = {n: by_n["batched"][n]["klines_requests"] * interval_s for n in ratios}
        ceilings = {n: round(by_n["per_symbol"][n]["wall_s"] / writes_s[n], 1) for n in ratios}
        ceilings_with_fetches = {
            n: round(by_n["per_symbol"][n]["wall_s"] / (writes_s[n] + fetches_s[n]), 1) for n in ratios
        }
    goals: dict[str, Any] = {}
    if 64 in by_n["batched"]:
        per_symbol_64 = by_n["batched"][64]["per_symbol_s"]
        goals["per_symbol_s_at_64"] = {"measured": per_symbol_64, "goal": f"≤ {GOAL_PER_SYMBOL_S_AT_64}"}
        goals["per_symbol_s_at_64"]["met"] = per_symbol_64 <= GOAL_PER_SYMBOL_S_AT_64
    if 256 in ratios:
        goals["ratio_at_256"] = {
            "measured": ratios[256],
            "goal": f"≥ {GOAL_RATIO_AT_256}",
            "met": ratios[256] >= GOAL_RATIO_AT_256,
        }
        if ceilings is not None:
            goals["ratio_at_256"]["ceiling_from_event_writes"] = ceilings[256]
            goals["ratio_at_256"]["ceiling_from_event_writes_and_fetches"] = ceilings_with_fetches[256]
    print(
        json.dumps(
            {
                "benchmark": "refresh",
                "tick": tick.isoformat(),
                "storage": args.storage,
                "event_batch_size": args.event_batch_size,
                "batch_symbols": args.batch,
                "fetch_concurrency": args.concurrency,
                "data": "simulated bars through the replay server (real HTTP, ccxt, rate limiter on)",
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "results": results,
                "event_write_ms": round(1000 * write_s, 3),
                "ratio_per_symbol_over_batched": ratios,
                "klines_interval_ms": round(1000 * interval_s, 3),
                "ratio_ceiling_from_event_writes": ceilings,
                "ratio_ceiling_from_event_writes_and_fetches": ceilings_with_fetches,
                "goals": goals,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
