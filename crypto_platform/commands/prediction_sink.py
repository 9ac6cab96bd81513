"""`crypto-platform prediction-sink`: the scorer's predictions into the history DB (serving/stream).

Kafka and the topic come from `serving.stream.config.load_stream_settings` (KAFKA_BOOTSTRAP_SERVERS,
CRYPTO_TOPIC_PREDICTIONS); the database is the API's history DB (CRYPTO_API_HISTORY_URL, else the SQLite
file beside the local data: `serving.core.history.history_url`), so the pipeline's track record and
daily report read the API's and the scorer's forecasts from one place.
Exit status: 0 after SIGTERM/SIGINT (the batch in flight stored and committed), 2 on bad arguments.
"""

from __future__ import annotations

import click

from crypto_platform.commands.service_process import configure_logging, exit_on_sigterm, run_until_signalled


@click.command(name="prediction-sink")
@click.option("--bootstrap-servers", default=None, help="Kafka brokers (default: KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--group-id", default="crypto-prediction-sink", show_default=True, help="Consumer group.")
@click.option("--history-url", default=None, help="SQLAlchemy URL (default: CRYPTO_API_HISTORY_URL).")
@click.option("--metrics-port", type=int, default=9109, show_default=True, help="Prometheus port (0 = off).")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=5000, show_default=True, help="Max records per batch."
)
@click.option("--log-level", default="INFO", show_default=True)
def command(
    bootstrap_servers: str | None,
    group_id: str,
    history_url: str | None,
    metrics_port: int,
    batch_size: int,
    log_level: str,
) -> None:
    exit_on_sigterm()
    from crypto_platform.settings import get_settings
    from serving.core.history import history_url as resolve_history_url
    from serving.stream.config import load_stream_settings
    from serving.stream.prediction_sink import PredictionSink, SinkConfig

    configure_logging(log_level)
    settings = get_settings()
    stream = load_stream_settings()
    config = SinkConfig(
        bootstrap_servers=bootstrap_servers or stream.bootstrap_servers,
        topic=stream.topics.predictions,
        history_url=history_url or resolve_history_url(settings),
        timeframe=settings.timeframe,
        group_id=group_id,
        batch_size=batch_size,
        metrics_port=metrics_port or None,
        client_id=f"{stream.client_id}-prediction-sink",
    )

    run_until_signalled(lambda: PredictionSink(config))
