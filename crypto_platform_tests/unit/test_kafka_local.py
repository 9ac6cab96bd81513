"""The pure parts of the local Kafka broker: configuration text, ids, the readiness probe's wire format."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from crypto_platform.devtools.kafka.local_broker import (
    POM_PATH,
    BrokerConfig,
    broker_command,
    choose_controller_port,
    default_cache_dir,
    kafka_version,
    new_cluster_id,
    server_properties,
)
from crypto_platform.devtools.kafka.runner import metadata_request, parse_broker_count
from serving.stream.config import Topics, load_stream_settings


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_server_properties_describe_a_single_node_kraft_broker_that_supports_transactions(tmp_path: Path):
    config = BrokerConfig(port=19092, controller_port=19093, data_dir=tmp_path)
    props = _properties(server_properties(config))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path / "kraft-combined-logs")
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):  # fmt: skip
        assert props[key] == "1"
    assert config.bootstrap_servers == "127.0.0.1:19092"


def test_broker_command_runs_kafka_from_the_cached_jars(tmp_path: Path):
    config = BrokerConfig(port=1, controller_port=2, data_dir=tmp_path)
    command = broker_command("/usr/bin/java", tmp_path / "libs", config, heap="256m")
    assert command[0] == "/usr/bin/java" and "-Xmx256m" in command
    assert command[-2:] == ["kafka.Kafka", str(tmp_path / "server.properties")]
    assert command[command.index("-cp") + 1] == str(tmp_path / "libs" / "*")
    assert f"-Dlog4j.configuration={(tmp_path / 'log4j.properties').as_uri()}" in command


def test_version_comes_from_the_pom_and_names_the_cache(tmp_path: Path):
    version = kafka_version()
    assert re.fullmatch(r"3\.9\.\d+", version)
    assert f"<kafka.version>{version}</kafka.version>" in POM_PATH.read_text()
    assert default_cache_dir({"CRYPTO_KAFKA_CACHE": str(tmp_path)}) == tmp_path
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path), "HOME": "/nowhere"}) == (
        tmp_path / "crypto-platform" / f"kafka-{version}"
    )


def test_cluster_ids_are_22_url_safe_characters_not_starting_with_a_dash():
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def test_controller_port_is_reused_when_free(tmp_path: Path):
    first = choose_controller_port(tmp_path, 9092)
    assert first != 9092
    (tmp_path / "kafka-local.json").write_text(f'{{"controller_port": {first}}}')
    assert choose_controller_port(tmp_path, 9092) == first


def test_metadata_probe_wire_format():
    request = metadata_request(42, "probe")
    (size,) = struct.unpack_from(">i", request)
    assert size == len(request) - 4
    api_key, version, correlation, client_len = struct.unpack_from(">hhih", request, 4)
    assert (api_key, version, correlation) == (3, 4, 42)
    assert request[14 : 14 + client_len] == b"probe"
    assert request[14 + client_len :] == struct.pack(">i?", 0, False)  # no topics, no auto-creation
    response = struct.pack(">iii", 42, 0, 1) + b"rest of the brokers array"
    assert parse_broker_count(response, 42) == 1
    with pytest.raises(ValueError):
        parse_broker_count(response, 43)


def test_stream_settings_from_the_environment():
    default = load_stream_settings({})
    assert default.bootstrap_servers == "127.0.0.1:9092"
    assert default.topics == Topics() and default.topics.all() == (
        "crypto-prices", "predictions", "alerts", "crypto-prices.dlq",
    )  # fmt: skip
    assert default.partitions == 3
    custom = load_stream_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": " a:1 , b:2 ",
            "CRYPTO_TOPIC_PRICES": "ticks",
            "CRYPTO_TOPIC_DLQ": "ticks.dlq",
            "CRYPTO_TOPIC_PARTITIONS": "6",
        }
    )
    assert custom.bootstrap_servers == "a:1,b:2"
    assert (custom.topics.prices, custom.topics.dlq, custom.topics.alerts) == ("ticks", "ticks.dlq", "alerts")
    assert custom.partitions == 6
    for bad in ({"CRYPTO_TOPIC_PARTITIONS": "0"}, {"CRYPTO_TOPIC_PARTITIONS": "x"},
                {"CRYPTO_TOPIC_ALERTS": "predictions"}):  # fmt: skip
        with pytest.raises(ValueError):
            load_stream_settings(bad)


def test_topics_env_round_trips_through_load_stream_settings():
    topics = Topics(prices="p", predictions="q", alerts="a", dlq="p.dlq")
    assert load_stream_settings({**topics.env(), "KAFKA_BOOTSTRAP_SERVERS": "h:1"}).topics == topics
