"""An idempotent, acks=all producer of radstream events with delivery reports."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from radstream.events.codec import codec_for
from radstream.events.models import Event
from radstream.events.serde import Codec
from radstream.kafka.config import base_config
from radstream.settings import Settings

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge an event."""


class EventProducer:
    """Thin typed wrapper: ``send`` is asynchronous, ``send_sync`` waits for the broker's ack."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        codec: Codec | None = None,
        transactional_id: str | None = None,
        **overrides: Any,
    ) -> None:
        conf = base_config(settings, client_id)
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.timeout.ms": 30000,
            }
        )
        if transactional_id:
            conf["transactional.id"] = transactional_id
        conf.update(overrides)
        self.settings = settings
        self.codec = codec or codec_for(settings)
        self._producer = Producer(conf)
        self._lock = threading.Lock()
        if transactional_id:
            self._producer.init_transactions()

    @property
    def raw(self) -> Producer:
        return self._producer

    def send(
        self,
        topic: str,
        key: str | bytes | None,
        event: Event,
        on_delivery: DeliveryCallback | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        value = self.codec.encode(event)
        hdrs = [("event-type", event.SCHEMA_NAME.encode()), *((k, v.encode()) for k, v in (headers or {}).items())]
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=hdrs, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def send_raw(self, topic: str, key: bytes | str | None, value: bytes,
                 on_delivery: DeliveryCallback | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def send_sync(self, topic: str, key: str | bytes | None, event: Event, timeout: float = 30.0) -> Message:
        """Send one event and wait for the broker's acknowledgement (acks=all)."""
        done = threading.Event()
        result: dict[str, Any] = {}

        def cb(err: KafkaError | None, msg: Message) -> None:
            result["err"], result["msg"] = err, msg
            done.set()

        self.send(topic, key, event, on_delivery=cb)
        self.wait(done, timeout)
        if result.get("err") is not None:
            raise DeliveryFailed(f"{topic}: {result['err']}")
        msg: Message = result["msg"]
        return msg

    def wait(self, done: threading.Event, timeout: float) -> None:
        """Serve delivery callbacks until ``done`` is set or ``timeout`` passes."""
        import time

        deadline = time.monotonic() + timeout
        while not done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeliveryFailed(f"no acknowledgement within {timeout:.0f}s")
            with self._lock:
                self._producer.poll(min(0.1, remaining))

    def poll(self, timeout: float = 0.0) -> int:
        with self._lock:
            return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for all outstanding deliveries; returns how many are still outstanding."""
        remaining = int(self._producer.flush(timeout))
        return remaining

    def begin(self) -> None:
        self._producer.begin_transaction()

    def commit_transaction(self, consumer_offsets: Any = None, group_metadata: Any = None) -> None:
        if consumer_offsets is not None:
            self._producer.send_offsets_to_transaction(consumer_offsets, group_metadata)
        self._producer.commit_transaction()

    def abort(self) -> None:
        try:
            self._producer.abort_transaction()
        except KafkaException as exc:
            log.warning("abort_transaction failed: %s", exc)

    def close(self) -> None:
        self.flush()
