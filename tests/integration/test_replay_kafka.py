"""Replay on the real broker: history re-emitted for another model version, live group untouched."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest

from radstream.events.models import InferenceRequested, Trigger
from radstream.kafka.consumer import EventConsumer, Received
from radstream.kafka.producer import EventProducer
from radstream.ops import replay as rp
from radstream.ops.status import committed_offsets
from radstream.ops.workers import replay_topic
from radstream.settings import Settings
from tests.avro_samples import sample_event
from tests.waiting import eventually

pytestmark = pytest.mark.kafka


def _live_request(i: int, when: datetime) -> InferenceRequested:
    ev = sample_event(InferenceRequested, i)
    assert isinstance(ev, InferenceRequested)
    return dataclasses.replace(ev, pipeline="liver", model_version="1", replay_id=None, shadow=False,
                               trigger=Trigger.SERIES_COMPLETE, study_instance_uid=f"1.2.826.0.1.{i}",
                               accession_number=f"ACC{i}", request_id=f"req-{i}", occurred_at=when)


def _drain(consumer: EventConsumer, want: int, timeout: float = 30.0) -> list[Received]:
    got: list[Received] = []
    eventually(lambda: got.extend(consumer.poll_batch(100, 0.5)) or len(got) >= want, timeout, 0, f"{want} msgs")
    return got


def test_replay_into_v2_leaves_live_offsets_alone_and_resumes(kafka_settings: Settings) -> None:
    s = kafka_settings
    live_topic = s.topic("requests.liver")
    producer = EventProducer(s, "test-dispatcher")
    t0 = datetime.now(UTC) - timedelta(hours=1)
    past = [_live_request(i, t0 + timedelta(seconds=i)) for i in range(20)]
    for r in past:
        producer.send_sync(live_topic, r.patient_key, r)
    live_group = f"{s.kafka.topic_prefix}-infer-liver"  # this test's own: groups outlive topics
    live = EventConsumer(s, live_group, [live_topic], client_id="live-worker")
    try:
        consumed = _drain(live, 20)
        live.commit(consumed)  # the live workers have handled all 20
        before = committed_offsets(s, live_group)
        assert sum(before.values()) == 20

        # a replay of everything retained into v2, stopped after its first batch, then resumed
        cp = rp.start(s, "liver", rp.Selection(), model_version="2")
        stop = threading.Event()
        cp = rp.run(s, cp, progress=lambda c: stop.set(), stop=stop, batch=5)
        assert not cp.done and 0 < cp.emitted < 20
        # live traffic keeps flowing meanwhile and is not part of the planned replay
        fresh = [_live_request(100 + i, datetime.now(UTC)) for i in range(3)]
        for r in fresh:
            producer.send_sync(live_topic, r.patient_key, r)
        resumed = rp.Checkpoint.load(s, cp.replay_id)
        assert resumed is not None and resumed.next == cp.next
        progress: list[int] = []
        done = rp.run(s, resumed, progress=lambda c: progress.append(c.emitted))
        assert done.done and done.emitted == 20 and progress[-1] == 20
        assert done.read == 20

        reader = EventConsumer(s, "test-replay-reader", [replay_topic(s, "liver")])
        try:
            replayed = [r.event for r in _drain(reader, 20)]
            assert not reader.poll_batch(10, 1.0)  # exactly 20, no duplicates across the stop/resume
        finally:
            reader.close()
        assert all(isinstance(e, InferenceRequested) for e in replayed)
        reqs = [e for e in replayed if isinstance(e, InferenceRequested)]
        assert {e.study_instance_uid for e in reqs} == {r.study_instance_uid for r in past}
        assert {e.trigger for e in reqs} == {Trigger.REPLAY}
        assert {e.model_version for e in reqs} == {"2"} and {e.replay_id for e in reqs} == {cp.replay_id}
        new_ids = {e.request_id for e in reqs}
        assert len(new_ids) == 20 and not new_ids & {r.request_id for r in past}
        assert {e.source_event_id for e in reqs} == {r.event_id for r in past}

        # the live group: offsets unchanged by the replay, and it still receives live traffic
        assert committed_offsets(s, live_group) == before
        got = _drain(live, 3)
        assert {r.event.request_id for r in got if isinstance(r.event, InferenceRequested)} == {
            r.request_id for r in fresh}
        live.commit(got)
    finally:
        live.close()


def test_replay_selects_by_study_accession_and_time(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = s.topic("requests.liver")
    producer = EventProducer(s, "test-dispatcher")
    t0 = datetime.now(UTC) - timedelta(hours=2)
    reqs = [_live_request(i, t0 + timedelta(minutes=10 * i)) for i in range(6)]
    for r in reqs:
        producer.send_sync(topic, r.patient_key, r)
    # a replayed or shadow request in history is never replayed again
    producer.send_sync(topic, "k", dataclasses.replace(_live_request(50, t0), replay_id="old"))

    def emitted(sel: rp.Selection) -> int:
        return rp.run(s, rp.start(s, "liver", sel)).emitted

    assert emitted(rp.Selection()) == 6
    assert emitted(rp.Selection(study_uids={"1.2.826.0.1.2"}, accession_numbers={"ACC4"})) == 2
    assert emitted(rp.Selection(since=t0 + timedelta(minutes=25), until=t0 + timedelta(minutes=41))) == 2
