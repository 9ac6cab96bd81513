"""Kafka settings shared by the producer and the scorer: bootstrap servers, topic names, partitions.

Environment:

| variable | default | meaning |
|---|---|---|
| `KAFKA_BOOTSTRAP_SERVERS` | `127.0.0.1:9092` | comma-separated host:port list |
| `CRYPTO_TOPIC_PRICES` | `crypto-prices` | ticks in (key = normalised symbol) |
| `CRYPTO_TOPIC_PREDICTIONS` | `predictions` | one prediction per valid tick |
| `CRYPTO_TOPIC_ALERTS` | `alerts` | regime / move / forecast alerts |
| `CRYPTO_TOPIC_DLQ` | `crypto-prices.dlq` | malformed ticks with the reason |
| `CRYPTO_TOPIC_PARTITIONS` | `3` | partitions of topics created by `ensure_topics` |
| `CRYPTO_KAFKA_CLIENT_ID` | `crypto-platform` | client id prefix (broker logs, quotas) |
| `CRYPTO_SCORER_INSTANCE` | `0` | stable id of a scorer in its group (transactional id, static membership) |
| `CRYPTO_SCORER_MODEL_NAME` | `crypto-volatility` | registered model the scorer follows at `champion` |
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_PARTITIONS = 3
_TOPIC_ALREADY_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS


@dataclass(frozen=True)
class Topics:
    prices: str = "crypto-prices"
    predictions: str = "predictions"
    alerts: str = "alerts"
    dlq: str = "crypto-prices.dlq"

    def all(self) -> tuple[str, ...]:
        return (self.prices, self.predictions, self.alerts, self.dlq)

    def env(self) -> dict[str, str]:
        """These names as the environment `load_stream_settings` reads (for a child process)."""
        return {
            "CRYPTO_TOPIC_PRICES": self.prices,
            "CRYPTO_TOPIC_PREDICTIONS": self.predictions,
            "CRYPTO_TOPIC_ALERTS": self.alerts,
            "CRYPTO_TOPIC_DLQ": self.dlq,
        }


@dataclass(frozen=True)
class StreamSettings:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    client_id: str = "crypto-platform"
    scorer_instance: str = "0"
    # None: the registry's default model name (lib.model.registry.MODEL_NAME, not imported here: it pulls
    # in MLflow, and the producer reads these settings too).
    scorer_model_name: str | None = None


def _topic(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def load_stream_settings(env: Mapping[str, str] | None = None) -> StreamSettings:
    env = os.environ if env is None else env
    defaults = Topics()
    topics = Topics(
        prices=_topic(env, "CRYPTO_TOPIC_PRICES", defaults.prices),
        predictions=_topic(env, "CRYPTO_TOPIC_PREDICTIONS", defaults.predictions),
        alerts=_topic(env, "CRYPTO_TOPIC_ALERTS", defaults.alerts),
        dlq=_topic(env, "CRYPTO_TOPIC_DLQ", defaults.dlq),
    )
    if len(set(topics.all())) != len(topics.all()):
        raise ValueError(f"the four topics must have distinct names, got {topics}")
    raw_partitions = env.get("CRYPTO_TOPIC_PARTITIONS", "").strip() or str(DEFAULT_PARTITIONS)
    try:
        partitions = int(raw_partitions)
    except ValueError:
        raise ValueError(f"CRYPTO_TOPIC_PARTITIONS must be an integer, got {raw_partitions!r}") from None
    if partitions < 1:
        raise ValueError(f"CRYPTO_TOPIC_PARTITIONS must be ≥ 1, got {partitions}")
    servers = ",".join(
        part.strip() for part in env.get("KAFKA_BOOTSTRAP_SERVERS", "").split(",") if part.strip()
    )
    return StreamSettings(
        bootstrap_servers=servers or DEFAULT_BOOTSTRAP_SERVERS,
        topics=topics,
        partitions=partitions,
        client_id=_topic(env, "CRYPTO_KAFKA_CLIENT_ID", "crypto-platform"),
        scorer_instance=_topic(env, "CRYPTO_SCORER_INSTANCE", "0"),
        scorer_model_name=env.get("CRYPTO_SCORER_MODEL_NAME", "").strip() or None,
    )


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min in-sync replicas) for a cluster of `brokers` nodes.

    Three copies at most (more buys little and costs a copy per write); min ISR one below the replication
    factor, so an `acks=all` write survives one broker down (on 3 brokers: 3 and 2; on 1: 1 and 1).
    """
    replication = max(1, min(3, brokers))
    return replication, max(1, replication - 1)


async def ensure_topics(
    bootstrap_servers: str,
    topics: Topics | Iterable[str],
    partitions: int = DEFAULT_PARTITIONS,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are (idempotent).

    `replication_factor` None: `replication_for` the brokers the cluster has, with that min ISR as the
    topic's `min.insync.replicas` (the scorer and the producer create their topics on a 3-broker
    cluster with 3 copies, not 1). Returns once every topic has a leader for each of its partitions, so
    a producer or consumer started right after sees them all. A topic that exists with fewer partitions
    is logged, not altered: adding partitions moves keys to other partitions and would break per-symbol
    ordering.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    names = list(dict.fromkeys(topics.all() if isinstance(topics, Topics) else topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            configs: dict[str, str] = {}
            replication = replication_factor
            if replication is None:
                brokers = len((await admin.describe_cluster()).get("brokers", []))
                replication, min_isr = replication_for(brokers)
                configs["min.insync.replicas"] = str(min_isr)
            response = await admin.create_topics(
                [NewTopic(name, partitions, replication, topic_configs=configs) for name in missing],
                timeout_ms=int(timeout_s * 1000),
            )
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                # Another process may create the same topic between our listing and our request.
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    message = entry[2] if len(entry) > 2 else ""
                    raise for_code(code)(f"creating topic {topic!r}: {message}")
            created = ", ".join(missing)
            log.info("created Kafka topics %s (%d partitions, %d replicas)", created, partitions, replication)
        await _wait_for_leaders(admin, names, timeout_s)
        described = await admin.describe_topics(names)
        for topic in described:
            count = len(topic.get("partitions", []))
            if count < partitions:
                log.warning(
                    "topic %s has %d partitions, fewer than the %d configured; left as it is",
                    topic.get("topic"), count, partitions,
                )  # fmt: skip
    finally:
        await admin.close()


async def _wait_for_leaders(admin, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        pending = [
            t.get("topic")
            for t in described
            if t.get("error_code", 0) != 0
            or not t.get("partitions")
            or any(p.get("leader", -1) < 0 for p in t["partitions"])
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"topics without a leader after {timeout_s:.0f}s: {', '.join(map(str, pending))}"
            )
        await asyncio.sleep(0.1)
