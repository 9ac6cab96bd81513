"""`crypto-platform exchange-replay`: serve Binance's spot REST endpoints from files or the simulator."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click


def _split_symbols(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command(name="exchange-replay")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0 = any free port).")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of binance_<SYMBOL>_<tf>.csv.gz / .csv / .parquet files (ts,open,high,low,close,volume).",
)
@click.option(
    "--simulate", default="", help="Comma-separated symbols served by the simulator, e.g. BTCUSDT,ETHUSDT."
)
@click.option("--seed", type=int, default=None, help="Simulator seed (default: CRYPTO_SIMULATOR_SEED or 7).")
@click.option(
    "--now", "now", default=None, help="Replay as if now were this UTC time (ISO-8601 or epoch ms)."
)
@click.option(
    "--open-candle", is_flag=True, help="Append the still-open candle to klines answers that reach now."
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND[:COUNT[:ENDPOINT]]",
    help="Fail the next COUNT requests (to ENDPOINT, e.g. klines): 429, 418, 500, 502, 503, 504 or timeout. "
    "Repeatable; more at runtime with POST /__replay__/faults.",
)
@click.option(
    "--fault-retry-after", type=int, default=1, show_default=True, help="Retry-After (s) of 429/418."
)
@click.option(
    "--fault-delay", type=float, default=15.0, show_default=True, help="Sleep (s) of a timeout fault."
)
@click.option("--verbose", is_flag=True, help="Log every request.")
def command(
    host: str,
    port: int,
    data_dir: Path | None,
    simulate: str,
    seed: int | None,
    now: str | None,
    open_candle: bool,
    faults: tuple[str, ...],
    fault_retry_after: int,
    fault_delay: float,
    verbose: bool,
) -> None:
    """Serve Binance spot REST endpoints (klines, exchangeInfo, tickers) for offline runs and tests."""
    from crypto_platform.devtools.replay.faults import FaultSpecError, parse_fault_spec
    from crypto_platform.devtools.replay.server import ReplayServer
    from crypto_platform.lib.market.timeframes import parse_instant
    from crypto_platform.settings import get_settings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s")
    symbols = _split_symbols(simulate)
    if data_dir is None and not symbols:
        raise click.UsageError("give --data DIR, --simulate SYMBOLS, or both")
    try:
        rules = [parse_fault_spec(spec, fault_retry_after, fault_delay) for spec in faults]
        now_ms = parse_instant(now) if now else None
        server = ReplayServer(
            data_dir,
            symbols,
            host=host,
            port=port,
            now_ms=now_ms,
            faults=rules,
            open_candle=open_candle,
            seed=get_settings().simulator_seed if seed is None else seed,
        )
        server.start()
    except (FaultSpecError, ValueError, FileNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc

    # SIGTERM (docker stop, CI teardown) shuts down like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    click.echo(f"exchange replay: {', '.join(server.store.symbol_ids())} at {server.url}")
    click.echo(f"  export CRYPTO_EXCHANGE_API_URL={server.url}")
    clock = f"frozen at {now_ms} ms" if now_ms is not None else "real time"
    click.echo(f"  clock: {clock}; request counts: {server.url}/__replay__/stats")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
