# ruff: noqa: F811  (pytest fixtures imported from infer_support)
"""Every long-running process serves /metrics, /healthz and /readyz, and its key metric moves.

The stream apps, the inference worker and the results sink run as the `radstream` commands a
container runs (ports from RADSTREAM_OBSERVABILITY__PORTS, free ports here); the ingest SCP and
the web app run in the test process. Real broker, PostgreSQL, Triton.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from radstream.devenv.process import free_port
from radstream.kafka.producer import EventProducer
from radstream.observability import Observability, postgres_ready
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore
from radstream.synth import SynthConfig, synthesize
from radstream.synth.requests import request_for_study
from tests.integration.aggregator_support import Sender, instance
from tests.integration.infer_support import triton_server, with_triton  # noqa: F401
from tests.integration.observability_support import RADSTREAM, child_env, health, metric, start, stop
from tests.integration.sink_events import completed, requested
from tests.integration.sink_harness import send_all
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka]


def _ready(port: int) -> dict[str, object]:
    code, body = eventually(lambda: (lambda r: r if r[0] == 200 else None)(health(port, "readyz")), timeout=60,
                            what=f"/readyz on {port}")
    assert code == 200 and body["ready"] is True
    return body


def _up(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    def answers() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return health(port)[0] == 200
        except httpx.HTTPError:
            return False

    eventually(answers, timeout=60, what=f"/healthz on {port}")


def test_aggregate_and_dispatch_commands(kafka_settings: Settings, tmp_path: Path) -> None:
    s = kafka_settings
    ports = {"aggregate": free_port(), "dispatch": free_port()}
    env = child_env(s, ports, RADSTREAM_AGGREGATOR__SERIES_QUIET_S="1", RADSTREAM_AGGREGATOR__PATIENT_QUIET_S="2",
                    RADSTREAM_AGGREGATOR__TIMER_INTERVAL_S="0.2")
    agg = start(["aggregate", "--log-level", "warning"], env, tmp_path / "aggregate.log")
    disp = start(["dispatch", "--log-level", "warning"], env, tmp_path / "dispatch.log")
    try:
        _up(agg, ports["aggregate"], tmp_path / "aggregate.log")
        _up(disp, ports["dispatch"], tmp_path / "dispatch.log")
        for port in ports.values():
            assert set(_ready(port)["checks"]) == {"kafka"}  # type: ignore[arg-type]
        sender = Sender(s)
        study = f"1.2.826.0.9.{uuid.uuid4().int % 10**12}"
        for n in range(5):
            sender.send(instance("pk-obs", study, f"{study}.1", n))
        sender.raw(b"pk-obs", b"not an event")
        sender.flush()
        a = ports["aggregate"]
        eventually(lambda: metric(a, "radstream_events_consumed_total", component="aggregate",
                                  topic=s.topic("instances")) == 6, timeout=60, what="6 instances consumed")
        assert metric(a, "radstream_deadletters_total", component="aggregate") == 1
        eventually(lambda: metric(a, "radstream_events_produced_total", topic=s.topic("series")) == 1
                   and metric(a, "radstream_events_produced_total", topic=s.topic("studies")) == 1,
                   timeout=60, what="the series and the study closed")
        assert metric(a, "radstream_aggregator_instances_total", outcome="new") == 5
        assert metric(a, "radstream_aggregator_completed_total", kind="series", reason="QUIET_PERIOD") == 1
        assert metric(a, "radstream_aggregator_completed_total", kind="study", reason="QUIET_PERIOD") == 1
        eventually(lambda: metric(a, "radstream_aggregator_open", kind="series") == 0, timeout=10, what="none open")
        d = ports["dispatch"]
        eventually(lambda: metric(d, "radstream_events_consumed_total", component="dispatch") == 2, timeout=60,
                   what="dispatcher read the series and the study")
        assert metric(d, "radstream_build_info", component="dispatch") == 1
        # the container health check is the real command on the same port
        out = subprocess.run([RADSTREAM, "healthcheck", "aggregate"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        assert stop(agg) == 0 and stop(disp) == 0


@pytest.mark.slow
def test_infer_command(kafka_settings: Settings, triton_server: object, tmp_path: Path) -> None:
    s = with_triton(kafka_settings, triton_server)
    port = free_port()
    root = tmp_path / "synth"
    truth = synthesize(root, SynthConfig(seed=3, brain_patients=1, liver_patients=0, hip_patients=0, timepoints=1))
    spec = load_inference_pipeline("brain-tumour")
    req = request_for_study(truth["studies"][0], root, ContentStore(s.store_root),
                            s.site_secret.get_secret_value().encode(), pipeline="brain-tumour",
                            model_name=spec.model.name)
    log = tmp_path / "infer.log"
    proc = start(["infer", "--pipeline", "brain-tumour"], child_env(s, {"infer": port}), log)
    try:
        _up(proc, port, log)
        assert set(_ready(port)["checks"]) == {"kafka", "triton"}  # type: ignore[arg-type]
        EventProducer(s, "test-dispatcher").send_sync(s.topic("requests.brain-tumour"), req.patient_key, req)
        labels = {"component": "infer", "pipeline": "brain-tumour"}
        eventually(lambda: metric(port, "radstream_events_processed_total", outcome="completed", **labels) == 1,
                   timeout=180, what="one completed request")
        assert metric(port, "radstream_processing_seconds_count", **labels) == 1
        assert metric(port, "radstream_end_to_end_seconds_count", **labels) == 1
        assert metric(port, "radstream_processing_seconds_sum", **labels) > 0
        assert metric(port, "radstream_events_consumed_total", topic=s.topic("requests.brain-tumour")) == 1
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]


@pytest.mark.postgres
def test_sink_results_command(pg_settings: Settings, tmp_path: Path) -> None:
    s = pg_settings
    port = free_port()
    log = tmp_path / "sink.log"
    proc = start(["sink", "results"], child_env(s, {"sink_results": port}), log)
    try:
        _up(proc, port, log)
        assert set(_ready(port)["checks"]) == {"kafka", "postgres"}  # type: ignore[arg-type]
        study = "1.2.826.0.7.1"
        send_all(s, s.topic("results"), [requested("pk", study), completed("pk", study)])
        eventually(lambda: metric(port, "radstream_events_processed_total", component="sink_results",
                                  pipeline="brain-tumour", outcome="written") == 2, timeout=60, what="2 written")
        assert metric(port, "radstream_end_to_end_seconds_count", component="sink_results") == 2
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]


@pytest.mark.postgres
def test_web_app_metrics(pg_settings: Settings) -> None:
    from radstream.db.migrate import migrate
    from radstream.web import create_app

    s = pg_settings
    migrate(s)
    obs = Observability("web", free_port())
    obs.add_readiness_check("postgres", postgres_ready(s))
    with obs, TestClient(create_app(s, obs=obs)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/login").status_code == 200
        assert client.get("/result/no-such-id", follow_redirects=False).status_code in (303, 401, 404)
        assert set(_ready(obs.port)["checks"]) == {"postgres"}  # type: ignore[arg-type]
        assert metric(obs.port, "radstream_http_requests_total", route="/login", status="200") == 1
        assert metric(obs.port, "radstream_http_requests_total", route="/healthz") == 1
        text = httpx.get(f"http://127.0.0.1:{obs.port}/metrics").text
        assert "no-such-id" not in text  # route templates only, never identifiers


def test_ingest_serves_the_shared_endpoint(kafka_settings: Settings) -> None:
    from tests.integration.ingest_support import ingest_settings, running_ingest

    port = free_port()
    s = ingest_settings(kafka_settings, metrics_port=port)
    with running_ingest(s):
        body = _ready(port)
        assert body["checks"]["dicom"]["ok"] is True  # type: ignore[index]
        assert health(port)[0] == 200
        out = subprocess.run(["echoscu", "-aec", s.dicom.ae_title, "127.0.0.1", str(s.dicom.port)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        eventually(lambda: metric(port, "radstream_ingest_echo_total") == 1, timeout=10, what="one C-ECHO")
        assert metric(port, "radstream_build_info", component="ingest") == 1

