"""A three-broker Kafka cluster losing brokers under load, with every radstream process running.

One private stack on a KRaft cluster of three combined broker/controller nodes; every radstream
topic (events, requests, changelogs, schemas) and the internal offsets and transaction topics
replicated 3 times with min ISR 2, unclean leader election off, producers acks=all. Each fault
gets its own small load and the counts of :mod:`tests.integration.fault_support`: every
acknowledged instance has its event and its result, 0 duplicate rows, every study closed once.
The aggregator's and the dispatcher's transactions survive their coordinator moving (it lives on
the leader of a ``__transaction_state`` partition, which the faults kill or restart).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from radstream.bench.stack import BenchStack, StackConfig
from radstream.bench.workload import Exam
from radstream.devenv.kafka import KafkaCluster
from tests.integration.fault_support import STREAM_S, Action, fault_exams, fault_under_load
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom,
              pytest.mark.timeout(900)]

SERIES_QUIET_S = 10.0
PATIENT_QUIET_S = 12.0
DELIVERY_TIMEOUT_S = 30.0  # the producers' message.timeout.ms (radstream.kafka.producer)


def _cluster(stack: BenchStack) -> KafkaCluster:
    assert isinstance(stack.kafka, KafkaCluster)
    return stack.kafka


def _leader_of(stack: BenchStack, short: str) -> int:
    """The node leading most partitions of a radstream topic now."""
    leaders = Counter(_cluster(stack).leaders(stack.settings.topic(short)).values())
    node, _ = leaders.most_common(1)[0]
    assert node > 0, f"{short} has a partition without a leader"
    return node


def _kill_leader(short: str, down_s: float) -> Action:
    def act(stack: BenchStack) -> None:
        node = _leader_of(stack, short)
        _cluster(stack).kill9(node)
        time.sleep(down_s)
        _cluster(stack).start_node(node)
    return act


def _rolling_restart(stack: BenchStack) -> None:
    cluster = _cluster(stack)
    for n in cluster.nodes:
        n.stop()  # a controlled shutdown: leadership moves first
        cluster.start_node(n.node_id)
        eventually(lambda: cluster.in_sync(stack.settings.topic("instances")), 60, interval=0.5,
                   what=f"instances back in sync after node {n.node_id}")


AFTER_SEND = STREAM_S + PATIENT_QUIET_S + 0.3  # the studies have completed: requests and results in flight
FAULTS: list[tuple[str, float, Action]] = [
    ("kill -9 the leader of instances during the send", 1.5, _kill_leader("instances", 5.0)),
    ("kill -9 the leader of results while workers and sinks run", AFTER_SEND, _kill_leader("results", 5.0)),
    ("rolling restart of all three brokers under load", 1.0, _rolling_restart),
    ("one broker down longer than the delivery timeout", 1.0,
     _kill_leader("instances", DELIVERY_TIMEOUT_S + 5.0)),
]


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Exam]]:
    return fault_exams(tmp_path_factory.mktemp("cluster-synth"), len(FAULTS), seed=9090)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    st = BenchStack(tmp_path_factory.mktemp("cluster-stack"),
                    StackConfig(series_quiet_s=SERIES_QUIET_S, patient_quiet_s=PATIENT_QUIET_S,
                                topic_prefix="cluster", brokers=3))
    try:
        st.up(timeout=300.0)
        yield st
    finally:
        st.down()


def test_every_topic_is_replicated_three_times_with_min_isr_two(stack: BenchStack) -> None:
    from confluent_kafka.admin import ConfigResource

    from radstream.kafka.topics import admin

    client = admin(stack.settings)
    # the radstream topics, the stream apps' changelogs (made by each app as it starts) and Kafka's own
    wanted = {"cluster.instances", "cluster.schemas", "cluster.aggregator.changelog", "cluster.dispatcher.changelog",
              "__consumer_offsets", "__transaction_state"}

    def present() -> list[str] | None:
        names = sorted(t for t in client.list_topics(timeout=10).topics
                       if t.startswith("cluster.") or t in ("__consumer_offsets", "__transaction_state"))
        return names if wanted <= set(names) else None

    ours = eventually(present, timeout=90, interval=1.0, what=f"the topics {sorted(wanted)}")
    md = client.list_topics(timeout=10)
    for name in ours:
        assert {len(p.replicas) for p in md.topics[name].partitions.values()} == {3}, name
    configs = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in ours])
    for res, fut in configs.items():
        entries = fut.result()
        assert entries["min.insync.replicas"].value == "2", res.name
        assert entries["unclean.leader.election.enable"].value == "false", res.name


@pytest.mark.parametrize("index", range(len(FAULTS)), ids=[f[0] for f in FAULTS])
def test_broker_fault_under_load_loses_nothing_and_duplicates_nothing(
    stack: BenchStack, exams: dict[str, list[Exam]], index: int
) -> None:
    name, at_s, action = FAULTS[index]
    fault_under_load(stack, exams, index, name, at_s, action, settle_s=PATIENT_QUIET_S,
                     results_timeout_s=240.0)
    cluster = _cluster(stack)
    eventually(lambda: all(n.ready() for n in cluster.nodes) and cluster.in_sync(stack.settings.topic("instances")),
               90, interval=1.0, what="the cluster whole again")
