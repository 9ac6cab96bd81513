"""Ingest: one year × 4 symbols of hourly bars through `ExchangeClient`, paginated vs one request a day.

Both contenders run in this process against the same replay server (real HTTP, unmodified ccxt),
with the same client code, and must return identical bars (checked):
- `paginated`: one `fetch_ohlcv` over the whole year per symbol → ceil(bars / 1000) klines requests;
- `per_day` (baseline): one `fetch_ohlcv` per UTC day partition, the naive backfill → 365 per symbol.

Figures: klines requests (counted by the server), wall time (median of `--repeats`; ccxt's rate
limiter is off because the server is local, so this is client + HTTP + server cost), and the
floor ccxt's rate limiter would add against the real exchange: Σ ccxt cost of each request × the
exchange's `rateLimit`, from the requests the server saw and ccxt's own cost table.

Data: the real Binance candles in ../shared/data/ohlcv when present (the year to 2026-04-16, where
every file is current), else the simulator (the year to 2025-06-01).

    .venv/bin/python benchmarks/ingest.py [--repeats 3] [--source auto|files|simulated]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import ccxt
import polars as pl

from crypto_platform.devtools.replay.server import ReplayServer
from crypto_platform.lib.market.client import ExchangeClient
from crypto_platform.lib.market.timeframes import HOUR_MS, parse_instant

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT")
DAY_MS = 24 * HOUR_MS
DAYS = 365
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYPTO_SHARED_OHLCV", REPO.parent / "shared" / "data" / "ohlcv"))


def _stats(server: ReplayServer) -> dict[str, Any]:
    return server.stats()


def _throttle_floor_s(limits: dict[str, int]) -> float:
    """Seconds ccxt's rate limiter would wait for these klines requests (limit → count)."""
    exchange = ccxt.binance()
    config = exchange.api["public"]["get"]["klines"]
    total_cost = sum(
        count
        * exchange.calculate_rate_limiter_cost(["public"], "GET", "klines", {"limit": int(limit)}, config)
        for limit, count in limits.items()
    )
    return total_cost * exchange.rateLimit / 1000.0


def _run(server: ReplayServer, year_start: int, year_end: int, per_day: bool, now_ms: int) -> dict[str, Any]:
    server.reset()
    client = ExchangeClient(api_url=server.url, enable_rate_limit=False)
    started = time.perf_counter()
    frames: dict[str, pl.DataFrame] = {}
    for symbol in SYMBOLS:
        if per_day:
            days = [
                client.fetch_ohlcv(symbol, "1h", day, day + DAY_MS, now_ms=now_ms).frame
                for day in range(year_start, year_end, DAY_MS)
            ]
            frames[symbol] = pl.concat(days)
        else:
            frames[symbol] = client.fetch_ohlcv(symbol, "1h", year_start, year_end, now_ms=now_ms).frame
    wall_s = time.perf_counter() - started
    stats = _stats(server)
    return {"wall_s": wall_s, "stats": stats, "frames": frames}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", choices=("auto", "files", "simulated"), default="auto")
    args = parser.parse_args()

    use_files = args.source == "files" or (
        args.source == "auto" and (SHARED / "binance_BTCUSDT_1h.csv.gz").exists()
    )
    if use_files:
        now_ms = parse_instant("2026-04-16T00:30Z")
        server = ReplayServer(data_dir=SHARED, now_ms=now_ms)
        data = f"real Binance 1h candles from {SHARED}"
    else:
        now_ms = parse_instant("2025-06-01T00:30Z")
        server = ReplayServer(simulate=[s.replace("/", "") for s in SYMBOLS], now_ms=now_ms)
        data = "simulated 1h candles (seed 7)"
    year_end = now_ms // DAY_MS * DAY_MS
    year_start = year_end - DAYS * DAY_MS

    with server:
        # Warm-up: read the files / generate the simulated paths once, outside the timings.
        _run(server, year_start, year_end, per_day=False, now_ms=now_ms)
        results: dict[str, list[dict[str, Any]]] = {"paginated": [], "per_day": []}
        for _ in range(args.repeats):
            for name in results:
                results[name].append(
                    _run(server, year_start, year_end, per_day=name == "per_day", now_ms=now_ms)
                )

    first_paginated, first_per_day = results["paginated"][0], results["per_day"][0]
    identical = all(first_paginated["frames"][s].equals(first_per_day["frames"][s]) for s in SYMBOLS)
    if not identical:
        raise SystemExit("paginated and per-day fetches returned different bars")

    def summary(name: str) -> dict[str, Any]:
        runs = results[name]
        stats = runs[0]["stats"]
        return {
            "klines_requests": sum(stats["klines_by_symbol"].values()),
            "klines_requests_per_symbol": stats["klines_by_symbol"],
            "other_requests": stats["total"] - stats["requests"].get("/api/v3/klines", 0),
            "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 4),
            "wall_s_runs": [round(r["wall_s"], 4) for r in runs],
            "ccxt_throttle_floor_s": round(_throttle_floor_s(stats["klines_limits"]), 3),
        }

    paginated, per_day = summary("paginated"), summary("per_day")
    bars = {s: first_paginated["frames"][s].height for s in SYMBOLS}
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "data": data,
                "window": {"start_ms": year_start, "end_ms": year_end, "days": DAYS, "timeframe": "1h"},
                "bars_per_symbol": bars,
                "identical_bars": identical,
                "paginated": paginated,
                "baseline_per_day": per_day,
                "ratio_requests_baseline_to_paginated": round(
                    per_day["klines_requests"] / paginated["klines_requests"], 2
                ),
                "ratio_wall_baseline_to_paginated": round(
                    per_day["wall_s_median"] / paginated["wall_s_median"], 2
                ),
                "ratio_throttle_floor_baseline_to_paginated": round(
                    per_day["ccxt_throttle_floor_s"] / paginated["ccxt_throttle_floor_s"], 2
                ),
                "repeats": args.repeats,
                "python": platform.python_version(),
                "ccxt": ccxt.__version__,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
