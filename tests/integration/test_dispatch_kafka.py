"""Aggregator + dispatcher on the real broker: instances in, InferenceRequested per pipeline out."""

from __future__ import annotations

import threading

import pytest
from radstream.stream_apps.aggregator import AggregatorWorker
from radstream.stream_apps.dispatcher import DispatcherWorker

from radstream.events.models import DeadLetter, InferenceRequested, Trigger
from radstream.settings import Settings
from tests.integration.aggregator_support import Sender, instance, read_all
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _requests(s: Settings, pipeline: str) -> list[InferenceRequested]:
    return [e for _, e in read_all(s, s.topic(f"requests.{pipeline}")) if isinstance(e, InferenceRequested)]


def test_instances_to_inference_requests(kafka_settings: Settings) -> None:
    s = kafka_settings.model_copy(update={"aggregator": kafka_settings.aggregator.model_copy(
        update={"series_quiet_s": 1.0, "patient_quiet_s": 2.0, "timer_interval_s": 0.25})})
    workers = [AggregatorWorker(s), DispatcherWorker(s)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        snd = Sender(s)
        for i in range(10):  # brain MR: a FLAIR (selected) and a localizer (not)
            snd.send(instance("B1", "9.1", "9.1.1", i, description="AX T2 FLAIR"))
        for i in range(3):
            snd.send(instance("B1", "9.1", "9.1.2", i, description="SAG localizer"))
        for i in range(2):  # pelvis radiographs: study-level trigger
            snd.send(instance("H1", "9.2", f"9.2.{i + 1}", 0, modality="DX", body_part="PELVIS",
                              description="PELVIS AP" if i == 0 else "HIP LAT"))
        snd.raw(b"B1", b"junk")  # poison for the aggregator
        snd.flush()
        brain = eventually(lambda: _requests(s, "brain-tumour"), timeout=60, what="brain request")
        hips = eventually(lambda: _requests(s, "hip-fracture"), timeout=60, what="hip request")
        eventually(lambda: read_all(s, s.topic("deadletter")), timeout=30, what="dead letter")
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(15)
    (b,) = brain
    assert b.trigger is Trigger.SERIES_COMPLETE and [x.series_instance_uid for x in b.series] == ["9.1.1"]
    assert [i.instance_number for i in b.series[0].instances] == list(range(10))
    assert b.model_name == "brain_lesion_ref" and b.patient_key == "B1"
    (h,) = hips
    assert h.trigger is Trigger.STUDY_COMPLETE and {x.series_instance_uid for x in h.series} == {"9.2.1", "9.2.2"}
    assert _requests(s, "liver") == []
    dead = [e for _, e in read_all(s, s.topic("deadletter"))]
    assert len(dead) == 1 and isinstance(dead[0], DeadLetter) and dead[0].payload == b"junk"
