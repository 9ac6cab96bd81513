"""`crypto-platform`: one entry point for every process the platform runs.

Each sub-command lives in its own module under `crypto_platform.commands` and is imported only
when invoked, so `crypto-platform exchange-replay` does not pay for importing Dagster or TensorFlow.
"""

from __future__ import annotations

import importlib

import click

# command name → module in crypto_platform.commands that defines a click command called `command`
COMMANDS: dict[str, tuple[str, str]] = {
    "materialize": ("materialize", "Materialize the asset graph once on the current Dagster instance."),
    "exchange-replay": ("exchange_replay", "Serve Binance REST endpoints from files or the simulator."),
    "serve": ("serve", "Run the Litestar risk API and web UI."),
    "kafka-local": ("kafka_local", "Run a Kafka (KRaft) broker, or an N-broker cluster, in the foreground."),
    "produce": ("produce", "Publish price ticks to Kafka (exchange, simulated or replayed bars)."),
    "score": ("score", "Score ticks from Kafka: predictions, alerts and a dead-letter queue."),
    "prediction-sink": ("prediction_sink", "Store the scorer's per-bar forecasts in the history DB."),
    "grpc": ("grpc_server", "Run the gRPC interface (crypto.CryptoService) over the API's services."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(f"crypto_platform.commands.{entry[0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="crypto-platform")
def main() -> None:
    """Crypto market data → risk and volatility signals."""


if __name__ == "__main__":
    main()
