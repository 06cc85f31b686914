"""Take what a consumer has, without waiting for a full batch.

``Consumer.consume(n, timeout)`` returns when it holds ``n`` messages or when ``timeout``
has passed, so a low-rate topic pays the whole timeout on every message: at the paper's load
each event waited up to 0.5 s in each consumer of the chain. :func:`consume_available`
returns as soon as there is anything: it waits (up to ``timeout``) only for the first
message, then takes what librdkafka has already fetched, up to ``max_messages``. Under load
the local queue holds thousands of messages and batches come out as large as before; a
consumer that writes a batch while the next is fetched (the sinks) gets batches that grow
to match how long a write takes.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def consume_available(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` messages: those already fetched, else the first to arrive within
    ``timeout`` seconds together with any that came with it. Error events count as messages."""
    got: list[Message] = consumer.consume(max_messages, 0)
    if got or timeout <= 0:
        return got
    first = consumer.poll(timeout)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(max_messages - 1, 0)]
