"""Dead letters: bad input goes to ``<prefix>.deadletter`` with why and where; nothing is dropped."""

from __future__ import annotations

import logging

from radstream import __version__
from radstream.events.models import DeadLetter
from radstream.kafka.consumer import Received
from radstream.kafka.producer import EventProducer

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, producer: EventProducer, component: str) -> None:
        self.producer = producer
        self.component = component
        self.topic = producer.settings.topic("deadletter")

    def from_message(self, received: Received, error: BaseException) -> None:
        """Dead-letter a consumed message and wait for Kafka's ack (then the caller may commit it)."""
        value = received.message.value() or b""
        self.send(
            source_topic=received.topic,
            source_partition=received.partition,
            source_offset=received.offset,
            source_key=received.key,
            payload=value if isinstance(value, bytes) else str(value).encode(),
            error=error,
        )

    def send(
        self,
        *,
        source_topic: str,
        payload: bytes,
        error: BaseException,
        source_partition: int = -1,
        source_offset: int = -1,
        source_key: bytes | None = None,
    ) -> None:
        event = DeadLetter(
            producer=f"{self.component}/{__version__}",
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            source_key=source_key,
            payload=payload,
            error_type=type(error).__name__,
            error=str(error)[:2000],
            component=self.component,
        )
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s", source_topic, source_partition, source_offset,
            type(error).__name__, str(error)[:200],
        )
        self.producer.send_sync(self.topic, source_key, event)
