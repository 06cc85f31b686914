"""Broker calls asked again while the broker answers with a transient error (retry_transient)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from radstream.kafka.transient import is_transient, retry_transient

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def failing(codes: list[int], result: str = "ok") -> Callable[[], str]:
    calls = iter(codes)

    def call() -> str:
        code = next(calls, None)
        if code is not None:
            raise KafkaException(KafkaError(code))
        return result

    return call


def test_asks_again_after_timeouts_and_a_loading_coordinator() -> None:
    clock = FakeClock()
    call = failing([KafkaError._TIMED_OUT, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._TIMED_OUT])
    assert retry_transient("committed offsets", call, sleep=clock.sleep, clock=clock) == "ok"
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_an_error_that_is_not_transient_raises_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(KafkaException) as info:
        retry_transient("committed offsets", failing([KafkaError.GROUP_AUTHORIZATION_FAILED]), sleep=clock.sleep,
                        clock=clock)
    assert info.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert clock.sleeps == []


def test_gives_up_at_the_deadline_with_the_last_error() -> None:
    clock = FakeClock()
    with pytest.raises(KafkaException) as info:
        retry_transient("watermark offsets", failing([KafkaError._TIMED_OUT] * 100), deadline_s=20.0,
                        sleep=clock.sleep, clock=clock)
    assert info.value.args[0].code() == KafkaError._TIMED_OUT
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]  # 17.5 s; one more 5 s wait would pass 20 s
    assert clock.now <= 20.0


def test_only_kafka_errors_count_as_transient() -> None:
    assert is_transient(KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    assert not is_transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not is_transient(RuntimeError("timed out"))


def test_a_broker_handle_destroyed_under_a_request_is_asked_again() -> None:
    """librdkafka drops a broker that left the metadata with its requests (seen on a 3-broker cluster: the
    dispatcher's watermark request during a rebalance failed with _DESTROY_BROKER and the process exited)."""
    clock = FakeClock()
    call = failing([KafkaError._DESTROY_BROKER])
    assert retry_transient("watermark offsets", call, sleep=clock.sleep, clock=clock) == "ok"
    assert clock.sleeps == [0.5]
