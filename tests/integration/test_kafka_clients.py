"""The Kafka wrappers against the real broker: every event type, dead letters, schema lookup."""

from __future__ import annotations

import io
import json
import time

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from radstream.events.models import DeadLetter, InstanceReceived
from radstream.events.schemas import current_schemas, fingerprint
from radstream.events.serde import MAGIC, SingleObjectCodec
from radstream.kafka.consumer import EventConsumer, Received
from radstream.kafka.deadletter import DeadLetters
from radstream.kafka.producer import EventProducer
from radstream.kafka.read_to_end import read_to_end
from radstream.kafka.topics import create_topics, describe_topics, topic_specs
from radstream.settings import Settings
from tests.avro_samples import all_sample_events, sample_event
from tests.waiting import eventually

pytestmark = pytest.mark.kafka


def _drain(consumer: EventConsumer, want: int, timeout: float = 30.0) -> list[Received]:
    got: list[Received] = []

    def more() -> bool:
        got.extend(consumer.poll_batch(100, 0.5))
        return len(got) >= want

    eventually(more, timeout, interval=0, what=f"{want} messages")
    return got


def test_every_event_type_round_trips_through_the_broker(kafka_settings: Settings) -> None:
    s = kafka_settings
    events = all_sample_events(seed=42)
    producer = EventProducer(s, "test-producer")
    topic = s.topic("results")
    for e in events:
        producer.send_sync(topic, b"k", e)
    consumer = EventConsumer(s, "test-roundtrip", [topic])
    try:
        got = _drain(consumer, len(events))
        assert [r.error for r in got] == [None] * len(events)
        assert [r.event for r in got] == events  # one key -> one partition -> order kept
        assert {h[0]: h[1] for h in got[0].message.headers()}["event-type"] == events[0].SCHEMA_NAME.encode()
        consumer.commit(got)
    finally:
        consumer.close()


def test_poison_message_goes_to_deadletter_and_consumer_continues(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = s.topic("instances")
    producer = EventProducer(s, "test-producer")
    good1, good2 = sample_event(InstanceReceived, 1), sample_event(InstanceReceived, 2)
    producer.send_sync(topic, b"p", good1)
    producer.send_raw(topic, b"p", b"\xde\xad\xbe\xef not an event")
    producer.send_sync(topic, b"p", good2)

    consumer = EventConsumer(s, "test-poison", [topic])
    dead = DeadLetters(producer, "test-component")
    processed = []
    try:
        for r in _drain(consumer, 3):
            if r.error is not None:
                dead.from_message(r, r.error)
            else:
                processed.append(r.event)
            consumer.commit([r])
        assert processed == [good1, good2]
    finally:
        consumer.close()

    dl = EventConsumer(s, "test-dl-reader", [s.topic("deadletter")])
    try:
        letters = _drain(dl, 1)
        letter = letters[0].event
        assert isinstance(letter, DeadLetter)
        assert letter.payload == b"\xde\xad\xbe\xef not an event"
        assert letter.source_topic == topic and letter.source_key == b"p"
        assert letter.source_offset == 1 and letter.error_type == "DecodeError"
        assert letter.component == "test-component"
    finally:
        dl.close()

    # committed past all three: a restarted member of the group sees nothing again
    again = EventConsumer(s, "test-poison", [topic])
    try:
        assert again.poll_batch(10, 3.0) == []
    finally:
        again.close()


def test_reader_resolves_unknown_writer_schema_from_schemas_topic(kafka_settings: Settings) -> None:
    """A reader older than its writer finds the writer's schema on the compacted schemas topic."""
    s = kafka_settings
    newer = json.loads(json.dumps(current_schemas()["InstanceReceived"].schema))
    newer["fields"].append({"name": "coil", "type": ["null", "string"], "default": None, "doc": "new"})
    fp = fingerprint(newer)
    raw = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
    raw.produce(s.topic("schemas"), key=fp, value=json.dumps(newer).encode())
    datum = sample_event(InstanceReceived, 5).to_avro()
    datum["coil"] = "HEAD-32"
    buf = io.BytesIO()
    buf.write(MAGIC + fp)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), datum)
    raw.produce(s.topic("instances"), key=b"x", value=buf.getvalue())
    assert raw.flush(10) == 0

    consumer = EventConsumer(s, "test-old-reader", [s.topic("instances")])
    try:
        got = _drain(consumer, 1)
        assert got[0].error is None
        assert isinstance(got[0].event, InstanceReceived)
        assert got[0].event.event_id == datum["event_id"]
    finally:
        consumer.close()


def test_topics_are_created_idempotently_with_their_settings(kafka_settings: Settings) -> None:
    s = kafka_settings
    assert create_topics(s) == []  # the fixture created them already
    infos = {t.name: t for t in describe_topics(s)}
    for spec in topic_specs(s):
        assert spec.name in infos
        assert infos[spec.name].partitions == spec.partitions
    assert infos[s.topic("schemas")].config["cleanup.policy"] == "compact"
    assert infos[s.topic("instances")].partitions == 3
    assert s.topic("requests.brain-tumour") in infos


def test_schemas_topic_holds_every_event_schema(kafka_settings: Settings) -> None:
    s = kafka_settings
    c = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": "x", "enable.auto.commit": False})
    c.assign([TopicPartition(s.topic("schemas"), 0, 0)])
    keys = set()
    try:
        def read() -> bool:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                keys.add(msg.key())
            return len(keys) >= 9
        eventually(read, 20, interval=0)
    finally:
        c.close()
    assert {sv for sv in SingleObjectCodec().current_schemas()} <= keys


def test_read_to_end_stops_at_todays_end_past_transaction_markers(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = s.topic("series")
    tx = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "transactional.id": f"t-{s.kafka.topic_prefix}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    for i in range(5):
        tx.produce(topic, key=f"k{i}", value=f"committed-{i}".encode(), partition=i % 2)
    tx.commit_transaction(30)
    tx.begin_transaction()
    tx.produce(topic, key="x", value=b"aborted", partition=0)
    tx.abort_transaction(30)
    tx.begin_transaction()  # left open: read_committed stops before it, at the last stable offset
    tx.produce(topic, key="y", value=b"open", partition=1)
    tx.flush(10)

    got = sorted(m.value() for m in read_to_end(s, [topic, s.topic("no-such-topic")], timeout=10))
    assert got == [f"committed-{i}".encode() for i in range(5)]
    tx.abort_transaction(30)


def test_poll_batch_returns_what_has_arrived_without_waiting_for_a_full_batch(kafka_settings: Settings) -> None:
    """A low-rate topic must not make each event wait the whole poll timeout (as
    ``Consumer.consume(n, timeout)`` does until it holds n messages)."""
    s = kafka_settings
    topic = s.topic("results")
    producer = EventProducer(s, "test-producer")
    consumer = EventConsumer(s, "test-available", [topic])
    try:
        # join the group (nothing there yet: each call waits its timeout and returns nothing)
        eventually(lambda: (consumer.poll_batch(100, 0.2) == [] and consumer.raw.assignment()) or None, 30,
                   interval=0, what="partitions assigned")
        events = [sample_event(InstanceReceived, i) for i in range(3)]
        for e in events:
            producer.send_sync(topic, b"same-key", e)
        got: list[Received] = []
        slowest = 0.0
        while len(got) < len(events):
            t0 = time.monotonic()
            batch = consumer.poll_batch(1000, 20.0)
            slowest = max(slowest, time.monotonic() - t0)
            assert batch, "nothing within 20 s"
            got.extend(batch)
        assert [r.event for r in got] == events
        assert slowest < 5.0, slowest  # consume(1000, 20.0) would have taken the full 20 s
    finally:
        consumer.close()
