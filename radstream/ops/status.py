"""Consumer groups of radstream's topics: members, committed offsets and lag per partition."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from radstream.kafka.topics import admin
from radstream.settings import Settings


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    end: int
    lag: int
    member: str | None = None  # client id of the member holding the partition now


@dataclass(slots=True)
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: list[tuple[str, int]]


@dataclass(slots=True)
class GroupStatus:
    group_id: str
    state: str
    members: list[Member] = field(default_factory=list)
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def lag_by_topic(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.partitions:
            out[p.topic] = out.get(p.topic, 0) + p.lag
        return out


def list_groups(client: AdminClient, timeout: float = 10.0) -> list[str]:
    res = client.list_consumer_groups(request_timeout=timeout).result()
    return sorted(g.group_id for g in res.valid)


def end_offsets(client: AdminClient, partitions: list[TopicPartition], timeout: float = 10.0
                ) -> dict[tuple[str, int], tuple[int, int]]:
    """(earliest, latest) offset of each partition (read_committed: latest = last stable offset)."""
    if not partitions:
        return {}
    out: dict[tuple[str, int], tuple[int, int]] = {}
    lows = client.list_offsets({TopicPartition(p.topic, p.partition): OffsetSpec.earliest() for p in partitions},
                               request_timeout=timeout)
    highs = client.list_offsets({TopicPartition(p.topic, p.partition): OffsetSpec.latest() for p in partitions},
                                request_timeout=timeout, isolation_level=IsolationLevel.READ_COMMITTED)
    for tp, fut in highs.items():
        low = lows[tp].result().offset
        out[(tp.topic, tp.partition)] = (int(low), int(fut.result().offset))
    return out


def topic_partitions(client: AdminClient, topics: list[str], timeout: float = 10.0) -> list[TopicPartition]:
    md = client.list_topics(timeout=timeout)
    return [TopicPartition(t, p) for t in topics if t in md.topics for p in sorted(md.topics[t].partitions)]


def group_status(settings: Settings, groups: list[str] | None = None, timeout: float = 10.0,
                 all_topics: bool = False) -> list[GroupStatus]:
    """Every consumer group (or the ones named) with members and lag on radstream's topics.

    Only topics under this deployment's prefix are shown unless ``all_topics``; groups that
    touch none of them are left out.
    """
    client = admin(settings)
    names = groups if groups is not None else list_groups(client, timeout)
    if not names:
        return []
    prefix = settings.kafka.topic_prefix + "."
    described = client.describe_consumer_groups(names, request_timeout=timeout)
    out: list[GroupStatus] = []
    for name in names:
        desc = described[name].result()
        members = [
            Member(m.member_id, m.client_id, m.host,
                   sorted((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])))
            for m in desc.members
        ]
        holder = {tp: m.client_id for m in members for tp in m.partitions}
        committed_res = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(name)],
                                                           request_timeout=timeout)[name].result()
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_res.topic_partitions or []}
        topics = sorted({t for t, _ in committed} | {t for t, _ in holder})
        if not all_topics:
            topics = [t for t in topics if t.startswith(prefix)]
        if not topics:
            continue
        tps = topic_partitions(client, topics, timeout)
        ends = end_offsets(client, tps, timeout)
        parts = []
        for tp in tps:
            key = (tp.topic, tp.partition)
            low, high = ends[key]
            c = committed.get(key)
            c = c if c is not None and c >= 0 else None
            lag = max(0, high - (c if c is not None else low))
            parts.append(PartitionLag(tp.topic, tp.partition, c, high, lag, holder.get(key)))
        out.append(GroupStatus(name, str(desc.state.name if hasattr(desc.state, "name") else desc.state),
                               members, parts))
    return out


def committed_offsets(settings: Settings, group: str, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """The group's committed offsets (used to prove a replay never moved a live group)."""
    client = admin(settings)
    res = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                             request_timeout=timeout)[group].result()
    return {(tp.topic, tp.partition): int(tp.offset) for tp in res.topic_partitions or [] if tp.offset >= 0}
