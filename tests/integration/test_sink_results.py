"""The results sink on the real broker and database: once-only, poison events, a database restart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from radstream.consumers.sinks import SinkRunner, results_spec

from radstream.db.migrate import migrate
from radstream.devenv.postgres import PostgresServer
from radstream.devenv.process import free_port
from radstream.events.models import DeadLetter, Detection, InstanceReceived
from radstream.kafka.config import base_config
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.producer import EventProducer
from radstream.settings import Settings
from tests.integration.sink_events import T0, completed, failed, requested, uid
from tests.integration.sink_harness import running_sink, scalar, send_all
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _count(s: Settings, table: str) -> int:
    return int(scalar(s, f"SELECT count(*) FROM {table}"))


def test_results_land_once_when_delivered_twice(pg_settings: Settings) -> None:
    migrate(pg_settings)
    s = pg_settings
    n = 40
    reqs = [requested(f"p{i % 7}", uid("st", i), study_date="20240101") for i in range(n)]
    done = [completed(f"p{i % 7}", uid("st", i), volume_ml=float(i + 1), study_date="20240101",
                      detections=[Detection("left-hip", "fracture", 0.9, [1.0, 2.0, 3.0, 4.0])],
                      blinding_hash=f"h{i}")
            for i in range(n - 5)]
    fails = [failed(f"p{i % 7}", uid("st", i)) for i in range(n - 5, n)]
    with running_sink(s, results_spec(s)) as runner:
        send_all(s, s.topic("requests.brain-tumour"), reqs)
        send_all(s, s.topic("results"), [*done, *fails])
        # at-least-once upstream: every event again, in another order, in other batches
        send_all(s, s.topic("results"), [*reversed(done), *fails])
        send_all(s, s.topic("requests.brain-tumour"), reqs[::-1])
        eventually(lambda: runner.stats.events >= 4 * n, 60, what="all deliveries consumed")
    assert _count(s, "requests") == n
    assert _count(s, "results") == n
    assert _count(s, "measurements") == n - 5
    assert _count(s, "detections") == n - 5
    assert _count(s, "blinding_map") == n - 5
    assert _count(s, "studies") == n and _count(s, "patients") == 7 and _count(s, "series") == n
    # the viewer's index of where each source instance lies in the store, once per instance
    instances = sum(len(se.instances) for r in reqs for se in r.series)
    assert instances > 0 and _count(s, "source_instances") == instances
    assert scalar(s, "SELECT count(*) FROM results WHERE status = 'failed'") == 5
    assert scalar(s, "SELECT series_description FROM series LIMIT 1") == "T1 post <contrast>"
    # a failure of a result that already completed does not replace it; a retry's success replaces a failure
    late_fail = failed("p0", uid("st", 0))
    late_fail.result_id = done[0].result_id
    retry_ok = completed(f"p{(n - 1) % 7}", uid("st", n - 1), volume_ml=5.0)
    first_stored = scalar(s, "SELECT stored_at FROM results WHERE result_id = %s", done[0].result_id)
    with running_sink(s, results_spec(s)) as runner:
        send_all(s, s.topic("results"), [late_fail, retry_ok, done[0]])
        eventually(lambda: runner.stats.events >= 3, 60, what="late events consumed")
    assert scalar(s, "SELECT status FROM results WHERE result_id = %s", done[0].result_id) == "completed"
    assert scalar(s, "SELECT stored_at FROM results WHERE result_id = %s", done[0].result_id) == first_stored
    assert scalar(s, "SELECT status FROM results WHERE result_id = %s", retry_ok.result_id) == "completed"
    assert scalar(s, "SELECT value FROM measurements WHERE result_id = %s", retry_ok.result_id) == 5.0
    assert _count(s, "results") == n and _count(s, "measurements") == n - 4


def _committed_offsets(s: Settings, group_id: str, topic: str) -> int:
    """Sum over the topic's partitions of the group's committed offsets (what it will not read again)."""
    probe = Consumer({**base_config(s, "test-offset-probe"), "group.id": group_id, "enable.auto.commit": False})
    try:
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        offsets = probe.committed([TopicPartition(topic, p) for p in meta.partitions], timeout=10)
    finally:
        probe.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def test_offsets_are_committed_after_the_writes_while_the_sink_runs(pg_settings: Settings) -> None:
    """A written batch's offsets are committed while the next batch is written or at the next idle
    poll, without waiting for the sink to stop, and never ahead of what the database holds."""
    migrate(pg_settings)
    s = pg_settings.model_copy(update={"sinks": pg_settings.sinks.model_copy(update={"batch_size": 7})})
    topic = s.topic("results")
    group = results_spec(s).group_id(s)
    events = [completed(f"po{i % 3}", uid("offsets", i), volume_ml=float(i)) for i in range(40)]
    with running_sink(s, results_spec(s)):
        send_all(s, topic, events)
        def caught_up() -> bool:
            committed = _committed_offsets(s, group, topic)
            assert committed <= _count(s, "results")  # offsets never ahead of the database
            return committed == len(events)
        eventually(caught_up, 60, what="the offsets of every written batch committed while running")
    assert _count(s, "results") == len(events)


def _dead_letters(s: Settings, expect: int) -> list[DeadLetter]:
    consumer = EventConsumer(s, f"{s.kafka.topic_prefix}.test-dlq", [s.topic("deadletter")])
    got: list[DeadLetter] = []
    try:
        def enough() -> bool:
            for r in consumer.poll_batch(100, 0.5):
                assert isinstance(r.event, DeadLetter)
                got.append(r.event)
            return len(got) >= expect
        eventually(enough, 60, what="dead letters")
    finally:
        consumer.close()
    return got


def test_poison_events_go_to_deadletter_and_the_sink_carries_on(pg_settings: Settings) -> None:
    migrate(pg_settings)
    s = pg_settings
    topic = s.topic("results")
    good_before = completed("pp", uid("poison", 1), volume_ml=1.0)
    good_after = completed("pp", uid("poison", 2), volume_ml=2.0)
    wrong_type = InstanceReceived(
        producer="x", patient_key="pp", sop_class_uid="1.2", sop_instance_uid="1.2.3", series_instance_uid="1.2.4",
        study_instance_uid="1.2.5", calling_ae_title="A", called_ae_title="B", peer_address="127.0.0.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", byte_size=1, sha256="0" * 64, store_uri="file:///x",
        received_at=T0)
    empty_id = completed("pp", uid("poison", 3))
    empty_id.result_id = ""
    dup_measure = completed("pp", uid("poison", 4))
    dup_measure.measurements = dup_measure.measurements * 2
    producer = EventProducer(s, "test-poison")
    with running_sink(s, results_spec(s)) as runner:
        send_all(s, topic, [good_before])
        producer.send_raw(topic, b"k1", b"\xc3\x01not avro at all")
        producer.send_raw(topic, b"k2", b"garbage")
        assert producer.flush(30) == 0
        send_all(s, topic, [wrong_type, empty_id, dup_measure, good_after])
        eventually(lambda: _count(s, "results") == 2 and runner.stats.dead_lettered == 5, 60,
                   what="good results stored, bad ones dead-lettered")
    letters = _dead_letters(s, 5)
    kinds = sorted(d.error_type for d in letters)
    assert kinds == sorted(["DecodeError", "UnknownSchemaError", "TypeError", "ValueError", "ValueError"])
    assert {d.payload for d in letters} >= {b"\xc3\x01not avro at all", b"garbage"}
    assert all(d.source_topic == topic and d.source_offset >= 0 for d in letters)
    # offsets of the poison events were committed too: a new runner of the group reads nothing
    again = SinkRunner(s, results_spec(s)).run(max_idle_s=3)
    assert again.events == 0 and again.dead_lettered == 0


def test_database_restart_mid_stream_loses_nothing(kafka_settings: Settings, tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "own-pg", port=free_port())
    server.start()
    s = kafka_settings.model_copy(update={
        "postgres": kafka_settings.postgres.model_copy(update={
            "host": server.host, "port": server.port, "user": server.user, "database": server.database}),
        "sinks": kafka_settings.sinks.model_copy(update={"batch_size": 50, "retry_initial_s": 0.2,
                                                         "retry_max_s": 1.0}),
    })
    try:
        migrate(s)
        topic = s.topic("results")
        events = [completed(f"p{i % 11}", uid("restart", i), volume_ml=float(i),
                            last_received_at=T0 + timedelta(seconds=i)) for i in range(600)]
        with running_sink(s, results_spec(s)) as runner:
            send_all(s, topic, events[:200])
            eventually(lambda: _count(s, "results") == 200, 60, what="first 200 results")
            server.stop()
            send_all(s, topic, events[200:400])
            eventually(lambda: runner.stats.outages >= 2, 60, what="the sink to notice the outage and retry")
            assert runner._paused
            send_all(s, topic, events[400:])
            server.start()
            eventually(lambda: _count(s, "results") == 600, 90, what="all 600 results after the restart")
            eventually(lambda: not runner._paused, 30, what="consumption to resume")
        assert _count(s, "measurements") == 600
        assert scalar(s, "SELECT count(DISTINCT result_id) FROM results") == 600
        # everything was committed after the database commit: nothing left to re-read
        again = SinkRunner(s, results_spec(s)).run(max_idle_s=3)
        assert again.events == 0
    finally:
        server.stop()
