"""`crypto-platform produce`: publish price ticks to the Kafka prices topic.

Sources:
- `exchange`: ticker polling through the shared ccxt client (CRYPTO_EXCHANGE_API_URL points it at
  the exchange replay server); `--rate` is the number of ticker requests per second.
- `simulated`: the seeded simulator at tick scale; each symbol ticks every `--interval` seconds of
  event time (default: symbols ÷ rate, so event time keeps pace with the wall clock).
- `replay`: stored bars (the pipeline's `ohlcv` asset, or `--data-dir` files) as four ticks per bar,
  `--speed` times faster than they happened (0: as fast as `--rate` allows).

Topics are created if missing. SIGTERM / SIGINT stop the producer after flushing what it holds; the
last line printed is the summary (`produce: sent=… errors=…`). Exit status 0 when every tick handed to
Kafka was acknowledged, 1 otherwise, 2 on bad arguments or an unreachable broker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command(name="produce")
@click.option(
    "--source",
    type=click.Choice(["exchange", "simulated", "replay"]),
    default="simulated",
    show_default=True,
    help="Where the ticks come from.",
)
@click.option(
    "--rate", type=float, default=10.0, show_default=True, help="Ticks per second in total (0: unlimited)."
)
@click.option("--symbols", default="", help="Comma-separated pairs (default: CRYPTO_SYMBOLS).")
@click.option(
    "--count", type=int, default=None, help="Stop after this many ticks (default: run until stopped)."
)
@click.option(
    "--speed",
    type=float,
    default=0.0,
    show_default=True,
    help="replay: play event time this many times faster than real time (0: pace by --rate only).",
)
@click.option(
    "--interval",
    type=float,
    default=None,
    help="simulated: seconds of event time between two ticks of a symbol (default: symbols/rate, or 2).",
)
@click.option(
    "--start",
    default=None,
    help="simulated: event time of the first tick; replay: start of the bars (ISO-8601 UTC or epoch ms).",
)
@click.option("--end", default=None, help="replay: end of the bars (exclusive; ISO-8601 UTC or epoch ms).")
@click.option(
    "--days", type=int, default=1, show_default=True, help="replay without --start: the last N days stored."
)
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="replay: binance_<SYMBOL>_<tf>.csv.gz/.parquet files instead of the stored ohlcv asset.",
)
@click.option("--seed", type=int, default=None, help="simulated: seed (default: CRYPTO_SIMULATOR_SEED).")
@click.option(
    "--bootstrap-servers",
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    default=None,
    help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092).",
)
@click.option("--topic", default=None, help="Prices topic (default: CRYPTO_TOPIC_PRICES or crypto-prices).")
@click.option(
    "--connect-timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the broker."
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO.")
def command(
    source: str,
    rate: float,
    symbols: str,
    count: int | None,
    speed: float,
    interval: float | None,
    start: str | None,
    end: str | None,
    days: int,
    data_dir: Path | None,
    seed: int | None,
    bootstrap_servers: str | None,
    topic: str | None,
    connect_timeout: float,
    verbose: bool,
) -> None:
    """Publish price ticks (exchange tickers, simulated or replayed bars) to Kafka."""
    from dataclasses import replace

    from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol
    from crypto_platform.lib.market.timeframes import parse_instant
    from crypto_platform.settings import get_settings
    from serving.stream.config import load_stream_settings

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    if rate < 0 or speed < 0 or (count is not None and count < 0) or days < 1:
        raise click.UsageError("--rate, --speed and --count must be ≥ 0 and --days ≥ 1")
    settings = get_settings()
    stream = load_stream_settings()
    if bootstrap_servers:
        stream = replace(stream, bootstrap_servers=bootstrap_servers)
    if topic:
        stream = replace(stream, topics=replace(stream.topics, prices=topic))
    try:
        names = [normalize_symbol(s) for s in (_split(symbols) or settings.symbols)]
        start_ms = parse_instant(start) if start else None
        end_ms = parse_instant(end) if end else None
    except (InvalidSymbolError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc

    source_errors = [0]
    blocking = False
    if source == "simulated":
        ticks = _simulated(
            names, rate, count, interval, start_ms, seed if seed is not None else settings.simulator_seed
        )
    elif source == "replay":
        ticks = _replay(names, settings, start_ms, end_ms, days, data_dir)
    else:
        ticks = _exchange(names, settings, source_errors)
        blocking = True

    from serving.stream.producer import Pacer, TickProducer, produce

    async def run() -> int:
        from serving.stream.config import ensure_topics

        try:
            await asyncio.wait_for(
                ensure_topics(stream.bootstrap_servers, stream.topics, stream.partitions), connect_timeout
            )
        except Exception as exc:
            click.echo(f"produce: Kafka at {stream.bootstrap_servers} is not usable: {exc!r}", err=True)
            return 2
        producer = TickProducer(
            stream.bootstrap_servers, stream.topics.prices, client_id=f"{stream.client_id}-producer-{source}"
        )
        await producer.start(connect_timeout)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        summary = await produce(
            ticks,
            producer,
            Pacer(rate, speed if source == "replay" else 0.0),
            stop,
            limit=count,
            blocking_source=blocking,
            source_errors=lambda: source_errors[0],
        )
        click.echo(summary.line(stream.topics.prices, source))
        if summary.errors:
            return 1
        # A run that produced nothing because every poll failed is a failure too.
        return 1 if summary.sent == 0 and summary.source_errors else 0

    sys.exit(asyncio.run(run()))


def _simulated(
    names: list[str], rate: float, count: int | None, interval: float | None, start_ms: int | None, seed: int
) -> Iterator:
    from crypto_platform.lib.stream.tick_sources import simulated_ticks

    if interval is None:
        # Each symbol's ticks are spaced so that, paced at --rate, event time keeps up with the wall clock.
        interval = len(names) / rate if rate > 0 else 2.0
    interval_ms = max(1, round(interval * 1000))
    if start_ms is None:
        now_ms = int(time.time() * 1000)
        # An unpaced, bounded run would otherwise stamp its ticks far in the future (the scorer rejects
        # those): it gets the recent past instead, ending now.
        start_ms = now_ms - (count * interval_ms) // len(names) if (rate == 0 and count) else now_ms
    return simulated_ticks(names, start_ms, interval_ms, seed)


def _replay(
    names: list[str], settings, start_ms: int | None, end_ms: int | None, days: int, data_dir: Path | None
) -> Iterator:
    from crypto_platform.lib.stream.tick_sources import load_replay_bars, replay_ticks

    try:
        bars = load_replay_bars(
            names,
            settings.timeframe,
            start_ms,
            end_ms,
            days=days,
            data_dir=str(data_dir) if data_dir else None,
            location=settings.data_location,
            endpoint_url=settings.s3_endpoint_url,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(f"nothing to replay: {exc}") from exc
    empty = [name for name, frame in bars.items() if frame.height == 0]
    if len(empty) == len(bars):
        raise click.UsageError(f"nothing to replay: no bars for {', '.join(empty)} in the window")
    return replay_ticks(bars, settings.timeframe)


def _exchange(names: list[str], settings, source_errors: list[int]) -> Iterator:
    from crypto_platform.lib.market.client import get_exchange_client
    from crypto_platform.lib.stream.tick_sources import exchange_ticks

    client = get_exchange_client(settings)
    log = logging.getLogger("crypto_platform.produce")

    def on_error(symbol: str, exc: Exception) -> None:
        source_errors[0] += 1
        log.warning("ticker poll for %s failed: %s", symbol, exc)

    return exchange_ticks(client.fetch_ticker, names, clock_ms=client.now_ms, on_error=on_error)
