"""A consumer of radstream events with manual commits after the effect is durable.

Decoding happens here; a message that cannot be decoded is handed back as a
:class:`Received` with ``error`` set, so the caller can dead-letter it (see
:class:`radstream.kafka.deadletter.DeadLetters`) and move on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from radstream.events.codec import codec_for
from radstream.events.models import Event
from radstream.events.serde import Codec, DecodeError
from radstream.kafka.available import consume_available
from radstream.kafka.config import base_config
from radstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Received:
    """One message: its decoded event, or the error that stopped decoding."""

    message: Message
    event: Event | None
    error: Exception | None = None

    @property
    def topic(self) -> str:
        return str(self.message.topic())

    @property
    def partition(self) -> int:
        return int(self.message.partition())

    @property
    def offset(self) -> int:
        return int(self.message.offset())

    @property
    def key(self) -> bytes | None:
        k = self.message.key()
        return k if isinstance(k, bytes) or k is None else str(k).encode()


# a commit refused because the group rebalanced under it
_LOST_TO_REBALANCE = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID}
)


class EventConsumer:
    def __init__(
        self,
        settings: Settings,
        group_id: str,
        topics: Sequence[str],
        client_id: str | None = None,
        codec: Codec | None = None,
        on_assign: Callable[[Consumer, list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[Consumer, list[TopicPartition]], None] | None = None,
        **overrides: Any,
    ) -> None:
        conf = base_config(settings, client_id or group_id)
        conf.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "max.poll.interval.ms": 600000,
            }
        )
        conf.update(overrides)
        self.settings = settings
        self.codec = codec or codec_for(settings)
        self._consumer = Consumer(conf)
        kwargs: dict[str, Any] = {}
        if on_assign:
            kwargs["on_assign"] = on_assign
        if on_revoke:
            kwargs["on_revoke"] = on_revoke
            kwargs["on_lost"] = on_revoke
        self._consumer.subscribe(list(topics), **kwargs)

    @property
    def raw(self) -> Consumer:
        return self._consumer

    def poll_batch(self, max_messages: int = 500, timeout: float = 1.0, *, fill: bool = False) -> list[Received]:
        """Up to ``max_messages`` messages, decoded; transport errors other than EOF raise.

        Returns as soon as there is something: waits up to ``timeout`` for the first message
        only, then takes what has already been fetched (see :func:`consume_available`). With
        ``fill``, waits up to ``timeout`` for all ``max_messages`` (for a caller with nothing
        better to do meanwhile: blocked in librdkafka, it leaves the interpreter to its other
        threads).
        """
        out: list[Received] = []
        msgs = (self._consumer.consume(max_messages, timeout) if fill
                else consume_available(self._consumer, max_messages, timeout))
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.retriable() or not err.fatal():
                    continue
                raise KafkaException(err)
            value = msg.value()
            try:
                if value is None:
                    raise DecodeError("empty message (tombstone) where an event was expected")
                out.append(Received(msg, self.codec.decode(value)))
            except DecodeError as exc:
                out.append(Received(msg, None, exc))
        return out

    def commit(self, received: Iterable[Received]) -> bool:
        """Synchronously commit past every message given (call after their effect is durable).

        Returns False when the group rebalanced under the commit (the partitions have, or will
        have, a new owner that gets those messages again: at-least-once, effects are idempotent);
        other commit errors raise.
        """
        latest: dict[tuple[str, int], int] = {}
        for r in received:
            k = (r.topic, r.partition)
            latest[k] = max(latest.get(k, -1), r.offset)
        if not latest:
            return True
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in latest.items()], asynchronous=False
            )
        except KafkaException as exc:
            if exc.args[0].code() not in _LOST_TO_REBALANCE:
                raise
            log.warning("offset commit lost to a consumer-group rebalance (%s); the messages are redelivered",
                        exc.args[0].name())
            return False
        return True

    def close(self) -> None:
        self._consumer.close()
