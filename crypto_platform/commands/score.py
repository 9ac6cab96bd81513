"""`crypto-platform score`: the streaming scorer (serving/stream/scorer.py) as a foreground process.

Kafka and topic names come from `serving.stream.config.load_stream_settings` (KAFKA_BOOTSTRAP_SERVERS,
CRYPTO_TOPIC_*); symbols, timeframe, data location and MLflow from `crypto_platform.settings`. The model
followed is CRYPTO_SCORER_MODEL_NAME (default: the registry's `crypto-volatility`) at alias `champion`.
Exit status: 0 after SIGTERM/SIGINT (drained and committed), 2 on bad arguments, 1 on a fatal error.
"""

from __future__ import annotations

import click

from crypto_platform.commands.service_process import configure_logging, exit_on_sigterm, run_until_signalled


def _default_instance() -> str:
    from serving.stream.config import load_stream_settings

    return load_stream_settings().scorer_instance


def _default_model_name() -> str:
    from crypto_platform.lib.model.registry import MODEL_NAME
    from serving.stream.config import load_stream_settings

    return load_stream_settings().scorer_model_name or MODEL_NAME


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


@click.command(name="score")
@click.option("--bootstrap-servers", default=None, help="Kafka brokers (default: KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--group-id", default="crypto-scorer", show_default=True, help="Consumer group.")
@click.option(
    "--instance-id",
    default=_default_instance,
    show_default="CRYPTO_SCORER_INSTANCE or 0",
    help="Stable id of this scorer in its group; with --exactly-once the transactional id is "
    "<group>-scorer-<instance>, so a restarted instance fences its predecessor.",
)
@click.option("--exactly-once", is_flag=True, help="Kafka transactions instead of at-least-once commits.")
@click.option("--metrics-port", type=int, default=9108, show_default=True, help="Prometheus port (0 = off).")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=5000, show_default=True, help="Max records per batch."
)
@click.option("--symbols", default=None, help="Comma-separated symbols accepted (default: CRYPTO_SYMBOLS).")
@click.option(
    "--model-name",
    default=_default_model_name,
    show_default="CRYPTO_SCORER_MODEL_NAME or crypto-volatility",
    help="Registered model followed at its champion alias.",
)
@click.option("--no-model", is_flag=True, help="Do not load a model: forecasts are null.")
@click.option("--model-poll-s", type=float, default=60.0, show_default=True, help="Alias poll interval.")
@click.option("--no-warm-start", is_flag=True, help="Start without stored bars.")
@click.option("--max-future-ms", type=int, default=60_000, show_default=True, help="Tolerated clock skew.")
@click.option("--log-level", default="INFO", show_default=True)
def command(
    bootstrap_servers: str | None,
    group_id: str,
    instance_id: str,
    exactly_once: bool,
    metrics_port: int,
    batch_size: int,
    symbols: str | None,
    model_name: str,
    no_model: bool,
    model_poll_s: float,
    no_warm_start: bool,
    max_future_ms: int,
    log_level: str,
) -> None:
    exit_on_sigterm()
    from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol
    from crypto_platform.settings import get_settings
    from serving.stream.config import load_stream_settings
    from serving.stream.scorer import Scorer, ScorerConfig

    configure_logging(log_level)
    settings = get_settings()
    stream = load_stream_settings()
    try:
        chosen = tuple(normalize_symbol(s) for s in _split(symbols)) or settings.symbols
    except InvalidSymbolError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from exc
    config = ScorerConfig(
        bootstrap_servers=bootstrap_servers or stream.bootstrap_servers,
        topics=stream.topics,
        settings=settings,
        group_id=group_id,
        instance_id=instance_id,
        exactly_once=exactly_once,
        batch_size=batch_size,
        symbols=chosen,
        metrics_port=metrics_port or None,
        model_name=None if no_model else model_name,
        model_poll_s=model_poll_s,
        warm_start=not no_warm_start,
        partitions=stream.partitions,
        max_future_ms=max_future_ms,
    )

    run_until_signalled(lambda: Scorer(config))
