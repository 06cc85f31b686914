"""Read topics from their start to the end they have now: for lookups, checks and tests.

Not a consumer-group reader: nothing is committed, each call is a fresh client with its own
throw-away group id. The end of each partition is its high watermark when the call starts
(later messages are not waited for); with ``read_committed`` (the default) the end of a
partition with an open transaction is its last stable offset, and transaction markers, which
take an offset but are never delivered, are handled by the end-of-partition events.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from radstream.kafka.config import base_config
from radstream.settings import Settings


class ReadTimeout(TimeoutError):
    """No message arrived for the allowed time before every partition was read to its end."""


def read_to_end(settings: Settings, topics: Iterable[str], *, timeout: float = 30.0,
                client_id: str = "radstream-read", read_committed: bool = True) -> Iterator[Message]:
    """Every message of ``topics`` (those that exist), oldest first per partition.

    Raises :class:`ReadTimeout` when ``timeout`` seconds pass without a message while some
    partition is not read to its end, and :class:`KafkaException` on a broker error.
    """
    consumer = Consumer({
        **base_config(settings, client_id),
        "group.id": f"{client_id}-{uuid.uuid4()}", "enable.auto.commit": False,
        "enable.partition.eof": True, "fetch.max.bytes": 52428800,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
    })
    try:
        todo: dict[tuple[str, int], int] = {}  # partition -> its end (high watermark now)
        assign = []
        for topic in topics:
            md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
            if md is None or md.error is not None:
                continue
            for p in md.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                if high > low:
                    todo[(topic, p)] = high
                    assign.append(TopicPartition(topic, p, low))
        if not assign:
            return
        consumer.assign(assign)
        deadline = time.monotonic() + timeout
        while todo:
            msgs = consumer.consume(1000, min(1.0, timeout))
            if not msgs:
                if time.monotonic() > deadline:
                    raise ReadTimeout(f"{len(todo)} partition(s) not read to their end within {timeout:.0f}s")
                continue
            deadline = time.monotonic() + timeout
            for m in msgs:
                where = (str(m.topic()), int(m.partition()))
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.pop(where, None)
                        continue
                    raise KafkaException(err)
                if where not in todo:
                    continue  # past the end this call promised (or the partition is done)
                if int(m.offset()) + 1 >= todo[where]:
                    todo.pop(where, None)
                yield m
    finally:
        consumer.close()
