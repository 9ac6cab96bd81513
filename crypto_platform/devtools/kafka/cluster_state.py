"""What a local cluster holds, read back through the admin API: a group's members and their partitions,
each partition's leader / replicas / ISR, a topic's effective configuration.

The fault tests and the scale-out benchmark ask these to know when a rebalance has settled (every
partition owned, by the members expected) and which broker leads what; they are also handy against
`kafka-local --brokers N` by hand. Every function opens and closes its own admin client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment


@dataclass(frozen=True)
class GroupMember:
    member_id: str
    client_id: str
    partitions: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class GroupState:
    state: str  # "Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead"
    members: tuple[GroupMember, ...]

    def owners(self, topic: str) -> dict[int, str]:
        """partition → client id of the member that owns it."""
        return {p: m.client_id for m in self.members for t, p in m.partitions if t == topic}


@dataclass(frozen=True)
class PartitionReplicas:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def _admin(bootstrap_servers: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)


async def group_state(bootstrap_servers: str, group_id: str) -> GroupState:
    """The group's state and each member's assignment (decoded from the consumer protocol)."""
    admin = _admin(bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    for response in responses:
        for group in response.groups:
            error_code, name, state, _protocol_type, _protocol, members = group[:6]
            if name != group_id or error_code:
                continue
            decoded = []
            for member in members:
                member_id, client_id, _host, _metadata, assignment = member[:5]
                parts = ConsumerProtocolMemberAssignment.decode(assignment).partitions() if assignment else []
                decoded.append(
                    GroupMember(member_id, client_id, tuple(sorted((tp.topic, tp.partition) for tp in parts)))
                )
            return GroupState(state, tuple(sorted(decoded, key=lambda m: m.client_id)))
    return GroupState("Dead", ())


async def partition_replicas(bootstrap_servers: str, topic: str) -> list[PartitionReplicas]:
    admin = _admin(bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        (
            PartitionReplicas(
                p["partition"], p["leader"], tuple(p["replicas"]), tuple(p.get("isr", p.get("isr_nodes", ())))
            )
            for p in described["partitions"]
        ),
        key=lambda r: r.partition,
    )


async def topic_configs(bootstrap_servers: str, topics: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each topic's effective configuration (its own settings and the broker defaults it inherits)."""
    admin = _admin(bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _error_code, _message, _type, name, entries = resource[:5]
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out
