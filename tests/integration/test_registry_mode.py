"""Confluent wire-format mode against a real schema registry (Apicurio, /apis/ccompat/v7).

Every event type goes through the real broker encoded as ``00`` + 4-byte schema id + Avro body,
with the schemas registered under the record-name subjects ``org.radstream.events.<Name>``.
"""

from __future__ import annotations

import json
import struct
import time
import urllib.request
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from radstream.events.codec import codec_for
from radstream.events.models import EVENT_TYPES
from radstream.events.schemas import current_schemas
from radstream.events.serde import ConfluentCodec, DecodeError, UnknownSchemaError
from radstream.kafka.consumer import EventConsumer, Received
from radstream.kafka.producer import EventProducer
from radstream.settings import Settings
from tests.avro_samples import all_sample_events
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from radstream.devenv.process import free_port
    from radstream.devenv.registry import SchemaRegistryServer

    server = SchemaRegistryServer(tmp_path_factory.mktemp("registry"), port=free_port())
    t0 = time.monotonic()
    server.start()
    print(f"schema registry answered after {time.monotonic() - t0:.1f}s at {server.url}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def registry_settings(kafka_settings: Settings, registry_url: str) -> Settings:
    return kafka_settings.model_copy(
        update={"kafka": kafka_settings.kafka.model_copy(update={"schema_registry_url": registry_url})}
    )


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _drain(consumer: EventConsumer, want: int, timeout: float = 30.0) -> list[Received]:
    got: list[Received] = []

    def more() -> bool:
        got.extend(consumer.poll_batch(100, 0.5))
        return len(got) >= want

    eventually(more, timeout, interval=0, what=f"{want} messages")
    return got


def _raw_values(settings: Settings, topic: str, want: int) -> list[bytes]:
    """The bytes on the wire, read without any codec."""
    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "raw-reader",
                  "enable.auto.commit": False})
    try:
        partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        values: list[bytes] = []

        def more() -> bool:
            for m in c.consume(100, 0.5):
                if m.error() is None and m.value() is not None:
                    values.append(m.value())
            return len(values) >= want

        eventually(more, 30, interval=0, what=f"{want} raw messages")
        return values
    finally:
        c.close()


def test_every_event_type_round_trips_in_confluent_wire_format(registry_settings: Settings) -> None:
    s = registry_settings
    assert isinstance(codec_for(s), ConfluentCodec)
    events = all_sample_events(seed=7)
    topic = s.topic("results")
    producer = EventProducer(s, "test-registry-producer")
    for e in events:
        producer.send_sync(topic, b"k", e)
    consumer = EventConsumer(s, "test-registry-roundtrip", [topic])  # its own codec: ids come from the registry
    try:
        got = _drain(consumer, len(events))
        assert [r.error for r in got] == [None] * len(events)
        assert [r.event for r in got] == events  # one key -> one partition -> order kept
        consumer.commit(got)
    finally:
        consumer.close()

    url = s.kafka.schema_registry_url
    assert url is not None
    wire = _raw_values(s, topic, len(events))
    ids = []
    for value, event in zip(wire, events, strict=True):
        assert value[0] == 0, "Confluent magic byte"
        (schema_id,) = struct.unpack(">I", value[1:5])
        ids.append(schema_id)
        registered = _get_json(f"{url}/schemas/ids/{schema_id}")
        assert isinstance(registered, dict)
        assert json.loads(registered["schema"]) == current_schemas()[event.SCHEMA_NAME].schema
    assert len(set(ids)) == len(EVENT_TYPES), "one schema id per event type"

    subjects = _get_json(f"{url}/subjects")
    assert isinstance(subjects, list)
    assert {f"org.radstream.events.{t.SCHEMA_NAME}" for t in EVENT_TYPES} <= set(subjects)
    for t in EVENT_TYPES:
        versions = _get_json(f"{url}/subjects/org.radstream.events.{t.SCHEMA_NAME}/versions")
        assert versions == [1], f"{t.SCHEMA_NAME} registered once, whatever the number of writers"

    # a second writer registers the same schemas and gets the same ids
    again = ConfluentCodec(url)
    assert [struct.unpack(">I", again.encode(e)[1:5])[0] for e in events] == ids


def test_registry_mode_rejects_foreign_bytes(registry_url: str) -> None:
    codec = ConfluentCodec(registry_url)
    with pytest.raises(DecodeError):
        codec.decode(b"\xc3\x01" + b"\x00" * 12)  # single-object encoding, not Confluent
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\x00" + struct.pack(">I", 987654) + b"\x02")
    event = all_sample_events(seed=1)[0]
    good = codec.encode(event)
    assert ConfluentCodec(registry_url).decode(good) == event
    with pytest.raises(DecodeError):
        codec.decode(good[:5] + b"\xff" * 3)
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode(good + b"\x00")

