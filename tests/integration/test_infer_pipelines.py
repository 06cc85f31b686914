# ruff: noqa: F811  (pytest fixtures imported from infer_support)
"""End to end on the real broker and a real Triton server: synthetic studies -> results.

Requests are built from `radstream synth` files copied into a store (no SCP or aggregator
needed); the workers are the same code `radstream infer` runs.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from radstream.events.models import DeadLetter, Event, InferenceCompleted, InferenceFailed, InferenceRequested
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.producer import EventProducer
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore, path_for_uri
from radstream.synth import SynthConfig, synthesize
from radstream.synth.requests import PIPELINE_FOR_KIND, request_for_study
from tests.integration.infer_support import WorkerThread, triton_server, with_triton  # noqa: F401
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class ResultReader:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = EventConsumer(settings, f"test-{uuid.uuid4().hex[:8]}", [topic])
        self.events: list[Event] = []

    def until(self, pred: Any, timeout: float, what: str) -> list[Event]:
        def poll() -> list[Event] | None:
            self.events.extend(r.event for r in self.consumer.poll_batch(50, 0.5) if r.event is not None)
            return self.events if pred(self.events) else None

        return eventually(poll, timeout=timeout, interval=0.05, what=what)

    def close(self) -> None:
        self.consumer.close()


def _requests(settings: Settings, root: Path, truth: dict[str, Any]) -> list[tuple[InferenceRequested, dict[str, Any]]]:
    store = ContentStore(settings.store_root)
    out = []
    for study in truth["studies"]:
        pipeline = PIPELINE_FOR_KIND[study["kind"]]
        spec = load_inference_pipeline(pipeline)
        req = request_for_study(study, root, store, settings.site_secret.get_secret_value().encode(),
                                pipeline=pipeline, model_name=spec.model.name)
        out.append((req, study))
    return out


def _results_of(settings: Settings, pairs: list[tuple[InferenceRequested, dict[str, Any]]],
                pipelines: tuple[str, ...]) -> list[Event]:
    """Publish the requests, run a worker per pipeline until each request has its result."""
    producer = EventProducer(settings, "test-dispatcher")
    reader = ResultReader(settings, settings.topic("results"))
    try:
        for req, _ in pairs:
            producer.send_sync(settings.topic(f"requests.{req.pipeline}"), req.patient_key, req)
        with contextlib.ExitStack() as workers:
            for p in pipelines:
                workers.enter_context(WorkerThread(settings, p))
            return reader.until(lambda evs: len(evs) >= len(pairs), 240, "one result per request")
    finally:
        reader.close()
        producer.flush()


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_synthetic_studies_come_out_as_correct_results(kafka_settings: Settings, triton_server: object,
                                                        tmp_path: Path) -> None:
    settings = with_triton(kafka_settings, triton_server)
    root = tmp_path / "synth"
    truth = synthesize(root, SynthConfig(seed=11, brain_patients=1, liver_patients=1, hip_patients=2, timepoints=2))
    pairs = _requests(settings, root, truth)
    events = _results_of(settings, pairs, ("brain-tumour", "liver", "hip-fracture"))
    by_request = {e.request_id: e for e in events if isinstance(e, (InferenceCompleted, InferenceFailed))}
    assert len(events) == len(pairs) == len(by_request)
    for req, study in pairs:
        res = by_request[req.request_id]
        assert isinstance(res, InferenceCompleted), res
        assert res.study_instance_uid == study["study_instance_uid"]
        assert res.model_name == load_inference_pipeline(req.pipeline).model.name and res.model_version == "1"
        assert {"load_series", "triton_infer", "total"} <= set(res.timings_ms)
        if study["kind"] == "pelvis_dx":
            want = study["truth"]["hips"]
            assert len(res.detections) == 2 * len(study["truth"]["images"])
            for det in res.detections:
                assert det.finding == want[det.label.split()[0]], (det, want)
                box = next(i["boxes"] for i in study["truth"]["images"]
                           if i["sop_instance_uid"] == det.sop_instance_uid)[det.label.split()[0]]
                assert all(abs(a - b) <= 2 for a, b in zip(det.box, box, strict=True))
            assert res.seg_uri is None and res.sr_uri is not None
        else:
            got = {m.label: m.value for m in res.measurements}
            for label, ml in study["truth"]["volumes_ml"].items():
                assert abs(got[label] - ml) <= 0.03 * ml, (label, got[label], ml)
            assert res.seg_uri is not None and res.sr_uri is not None
            seg = hd.seg.segread(path_for_uri(res.seg_uri))
            assert seg.SeriesInstanceUID != study["series"][0]["series_instance_uid"]
            refs = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
            assert refs == {study["series"][0]["series_instance_uid"]}
            labels = {d.SegmentLabel for d in seg.SegmentSequence}
            assert labels == set(study["truth"]["volumes_ml"])
            if req.pipeline == "liver":
                assert res.blinding_hash and res.blinding_hash in seg.SeriesDescription
                assert "liver_lobes_ref" not in str(seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence)
            assert not _dciodvfy_errors(path_for_uri(res.seg_uri))
        sr = hd.sr.srread(path_for_uri(res.sr_uri))
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert str(sr.ContentTemplateSequence[0].TemplateIdentifier) == "1500"
        groups = sr.content.get_volumetric_roi_measurement_groups() + \
            sr.content.get_planar_roi_measurement_groups()
        assert len(groups) == (len(res.detections) or len(study["truth"]["volumes_ml"]))
        assert not _dciodvfy_errors(path_for_uri(res.sr_uri))


def test_triton_down_then_up_completes_and_impossible_request_fails_once(
        kafka_settings: Settings, triton_server: object, tmp_path: Path) -> None:
    from radstream.devenv.triton import TritonServer

    assert isinstance(triton_server, TritonServer)
    settings = with_triton(kafka_settings, triton_server, retries=6, backoff_initial_s=0.5, backoff_max_s=4.0)
    root = tmp_path / "synth"
    truth = synthesize(root, SynthConfig(seed=5, brain_patients=1, liver_patients=0, hip_patients=0, timepoints=2))
    (good, _), (doomed, _) = _requests(settings, root, truth)
    # impossible: an instance whose bytes are not in the store
    missing = settings.store_root / "sha256" / "00" / "00" / ("0" * 64 + ".dcm")
    doomed.series[0].instances[3].store_uri = missing.as_uri()
    producer = EventProducer(settings, "test-dispatcher")
    reader = ResultReader(settings, settings.topic("results"))
    dead = ResultReader(settings, settings.topic("deadletter"))
    topic = settings.topic("requests.brain-tumour")
    try:
        triton_server.stop()
        with WorkerThread(settings, "brain-tumour") as w:
            producer.send_sync(topic, doomed.patient_key, doomed)
            producer.send_raw(topic, b"k", b"\x00 not an avro event")
            producer.send_sync(topic, good.patient_key, good)
            producer.flush()
            # the doomed request fails at load_series, the garbage goes to the dead letters,
            # and the good one waits for Triton
            reader.until(lambda evs: any(e.request_id == doomed.request_id for e in evs), 60, "failed request")
            dead.until(lambda evs: len(evs) >= 1, 60, "dead letter")
            triton_server.start()
            events = reader.until(lambda evs: any(e.request_id == good.request_id for e in evs), 120, "good request")
            # the worker counts a request after committing its offset, which follows the result we saw
            eventually(lambda: w.worker.processed >= 3 or None, 10, what="the worker's count")
            assert w.worker.processed == 3
    finally:
        triton_server.start()
        reader.close()
        dead.close()
        producer.flush()
    results = [e for e in events if isinstance(e, (InferenceCompleted, InferenceFailed))]
    failed = [e for e in results if e.request_id == doomed.request_id]
    assert len(failed) == 1 and isinstance(failed[0], InferenceFailed)
    assert failed[0].stage == "load_series" and not failed[0].retriable
    done = [e for e in results if e.request_id == good.request_id]
    assert len(done) == 1 and isinstance(done[0], InferenceCompleted)
    ml = truth["studies"][0]["truth"]["volumes_ml"]["lesion"]
    assert abs(done[0].measurements[0].value - ml) <= 0.03 * ml
    assert isinstance(dead.events[0], DeadLetter) and dead.events[0].component == "radstream-infer"
    assert pydicom.dcmread(path_for_uri(done[0].sr_uri or "")).Modality == "SR"


def test_triton_that_never_returns_gives_one_retriable_failure(kafka_settings: Settings, tmp_path: Path) -> None:
    from radstream.devenv.process import free_port

    # nothing listens on these ports: every try fails as unavailable
    settings = kafka_settings.model_copy(update={
        "triton": kafka_settings.triton.model_copy(update={
            "host": "127.0.0.1", "grpc_port": free_port(), "http_port": free_port(), "retries": 1,
            "backoff_initial_s": 0.1, "backoff_max_s": 0.2}),
        "inference": kafka_settings.inference.model_copy(update={"max_attempts": 2}),
    })
    root = tmp_path / "synth"
    truth = synthesize(root, SynthConfig(seed=6, brain_patients=0, liver_patients=0, hip_patients=1, timepoints=1))
    ((req, _),) = _requests(settings, root, truth)
    producer = EventProducer(settings, "test-dispatcher")
    reader = ResultReader(settings, settings.topic("results"))
    try:
        producer.send_sync(settings.topic("requests.hip-fracture"), req.patient_key, req)
        with WorkerThread(settings, "hip-fracture"):
            events = reader.until(lambda evs: len(evs) >= 1, 60, "a result")
    finally:
        reader.close()
        producer.flush()
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, InferenceFailed) and ev.retriable and ev.stage == "triton_infer" and ev.attempts == 2


def test_seg_and_sr_reach_the_pacs(kafka_settings: Settings, triton_server: object, tmp_path: Path) -> None:
    """``pacs_export`` against dcmtk's storescp: the SEG and SR of each result arrive there, as
    written to the store, over one association per result."""
    from radstream.devenv.process import free_port, port_open

    received = tmp_path / "pacs"
    received.mkdir()
    pacs_port = free_port()
    storescp = subprocess.Popen(["storescp", "--aetitle", "PACS", "--output-directory", str(received),
                                 "--accept-all", str(pacs_port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        eventually(lambda: port_open("127.0.0.1", pacs_port) or None, timeout=20, what="storescp")
        settings = with_triton(kafka_settings, triton_server)
        inference = settings.inference.model_copy(update={"pacs_host": "127.0.0.1", "pacs_port": pacs_port,
                                                          "pacs_ae_title": "PACS"})
        settings = settings.model_copy(update={"inference": inference})
        root = tmp_path / "synth"
        truth = synthesize(root, SynthConfig(seed=12, brain_patients=1, liver_patients=0, hip_patients=1, timepoints=1))
        pairs = _requests(settings, root, truth)
        events = _results_of(settings, pairs, ("brain-tumour", "hip-fracture"))
    finally:
        storescp.terminate()
        _, err = storescp.communicate(timeout=20)
    results = [e for e in events if isinstance(e, InferenceCompleted)]
    assert len(results) == len(pairs), events
    sent = [uri for r in results for uri in (r.seg_uri, r.sr_uri) if uri is not None]
    assert len(sent) == 3  # brain: SEG + SR; hip: SR
    want = {str(pydicom.dcmread(path_for_uri(u)).SOPInstanceUID) for u in sent}
    got = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in received.iterdir()}
    assert set(got) == want, (sorted(got), sorted(want), err.decode(errors="replace")[-2000:])
    for uri in sent:
        stored = pydicom.dcmread(path_for_uri(uri))
        arrived = pydicom.dcmread(got[str(stored.SOPInstanceUID)])
        assert arrived.SOPClassUID == stored.SOPClassUID and arrived.SeriesInstanceUID == stored.SeriesInstanceUID
        assert arrived.PatientID == stored.PatientID
