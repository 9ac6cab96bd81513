"""The pure parts of `kafka-local --brokers N`: replication per cluster size, the persisted layout, and each
node's server.properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crypto_platform.devtools.kafka.local_broker import (
    BrokerSetupError,
    cluster_layout,
    replication_for,
    server_properties,
)
from crypto_platform.devtools.kafka.runner import LocalKafka


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize(
    ("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))]
)  # fmt: skip
def test_replication_survives_one_broker_down_with_acks_all(brokers: int, expected: tuple[int, int]):
    assert replication_for(brokers) == expected


def test_layout_is_created_once_and_read_back_unchanged(tmp_path: Path):
    first = cluster_layout(tmp_path, 3)
    again = cluster_layout(tmp_path, 3)
    assert again == first
    ports = [n.port for n in first.nodes] + [n.controller_port for n in first.nodes]
    assert len(set(ports)) == 6
    assert [n.node_id for n in first.nodes] == [1, 2, 3]
    stored = json.loads((tmp_path / "cluster.json").read_text())
    assert stored["cluster_id"] == first.cluster_id
    assert first.bootstrap_servers == ",".join(f"127.0.0.1:{n.port}" for n in first.nodes)


def test_base_port_numbers_the_client_ports_and_controllers_avoid_them(tmp_path: Path):
    layout = cluster_layout(tmp_path, 3, base_port=29092)
    assert [n.port for n in layout.nodes] == [29092, 29093, 29094]
    assert not {n.controller_port for n in layout.nodes} & {29092, 29093, 29094}


def test_a_layout_of_another_size_is_refused(tmp_path: Path):
    cluster_layout(tmp_path, 3)
    with pytest.raises(BrokerSetupError, match="3-broker cluster"):
        cluster_layout(tmp_path, 5)


def test_every_node_lists_the_whole_quorum_and_replicates_internal_topics(tmp_path: Path):
    layout = cluster_layout(tmp_path, 3)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in layout.nodes)
    for node in layout.nodes:
        config = layout.broker_config(node.node_id)
        props = _properties(server_properties(config))
        assert props["node.id"] == str(node.node_id)
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["log.dirs"] == str(tmp_path / f"node-{node.node_id}" / "kraft-combined-logs")
        for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                    "default.replication.factor"):  # fmt: skip
            assert props[key] == "3"
        assert props["transaction.state.log.min.isr"] == props["min.insync.replicas"] == "2"
        assert props["unclean.leader.election.enable"] == "false"


def test_a_cluster_node_is_started_as_one_node_of_the_layout(tmp_path: Path):
    node = LocalKafka(tmp_path, 29093, brokers=3, node_id=2)
    command = node.command()
    assert command[command.index("--data-dir") + 1] == str(tmp_path)
    assert command[command.index("--brokers") + 1] == "3"
    assert command[command.index("--node-id") + 1] == "2"
    assert node.log_path == tmp_path / "node-2.log"
