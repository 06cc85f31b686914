"""Ask the broker again while it answers with a transient error.

A broker that has just started, or one on a busy machine, answers offset and metadata requests
with timeouts or "coordinator load in progress" for a while. A worker that treats the first such
answer as fatal exits in the middle of a rebalance callback; :func:`retry_transient` asks again
with back-off until a deadline, and still raises what is not transient (or the last error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_CODES = frozenset({
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
    # librdkafka (2.10+) drops a broker that left the metadata (one restarting in a cluster) with its
    # requests in flight: asked again, the request goes to the partition's new leader
    KafkaError._DESTROY_BROKER,
})


def is_transient(exc: BaseException) -> bool:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and (err.code() in TRANSIENT_CODES or err.retriable())


def retry_transient(what: str, call: Callable[[], T], deadline_s: float = 120.0,
                    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """``call()``, again after 0.5, 1, 2, 4, 5, 5 ... s while it raises a transient KafkaException and
    ``deadline_s`` has not passed; then, or for any other error, the error is raised."""
    start, delay = clock(), 0.5
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not is_transient(exc) or clock() - start + delay > deadline_s:
                raise
            log.warning("%s: %s; asking the broker again in %.1fs", what, exc.args[0], delay)
        sleep(delay)
        delay = min(delay * 2, 5.0)
