"""Run a sink in a thread against the real broker and database, and read what it wrote."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from radstream.consumers.sinks import SinkRunner, SinkSpec, SinkStats

from radstream.db.connect import connect
from radstream.events.models import Event
from radstream.kafka.producer import EventProducer
from radstream.settings import Settings


def send_all(settings: Settings, topic: str, events: Iterable[Event], key: str | None = None) -> int:
    producer = EventProducer(settings, "test-sink-producer")
    n = 0
    for e in events:
        producer.send(topic, key or getattr(e, "study_instance_uid", None) or e.event_id, e)
        n += 1
    assert producer.flush(30) == 0
    return n


@contextmanager
def running_sink(settings: Settings, spec: SinkSpec) -> Iterator[SinkRunner]:
    runner = SinkRunner(settings, spec)
    errors: list[BaseException] = []
    result: list[SinkStats] = []

    def target() -> None:
        try:
            result.append(runner.run())
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=target, name=f"sink-{spec.name}", daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(60)
        assert not thread.is_alive(), "sink did not stop"
    assert not errors, errors


def scalar(settings: Settings, query: str, *params: Any) -> Any:
    with connect(settings, autocommit=True) as conn:
        row = conn.execute(query.encode(), params or None).fetchone()
    return None if row is None else row[0]
