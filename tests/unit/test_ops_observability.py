"""The shared metrics/health endpoint, served for real on a free loopback port."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from radstream.devenv.process import free_port
from radstream.observability import Observability
from radstream.settings import Settings, load_settings
from tests.waiting import eventually

pytestmark = pytest.mark.unit


def test_metrics_healthz_and_readyz_are_served() -> None:
    port = free_port()
    healthy = threading.Event()
    healthy.set()
    obs = Observability("infer", port, labels={"pipeline": "liver"}, readiness_timeout_s=0.5)
    obs.add_readiness_check("db", lambda: True if healthy.is_set() else "database down")
    m = obs.consumer_metrics()
    with obs:
        m.consumed_event("radstream.requests.liver", 3)
        m.outcome("liver", "completed", seconds=0.2, end_to_end_s=4.0)
        m.set_lag("radstream.requests.liver", 0, 7)
        base = f"http://127.0.0.1:{port}"
        text = httpx.get(f"{base}/metrics").text
        assert 'radstream_events_consumed_total{component="infer",topic="radstream.requests.liver"} 3.0' in text
        assert 'radstream_events_processed_total{component="infer",outcome="completed",pipeline="liver"} 1.0' in text
        assert 'radstream_end_to_end_seconds_bucket{component="infer",le="5.0",pipeline="liver"} 1.0' in text
        assert 'radstream_consumer_lag{component="infer",partition="0",topic="radstream.requests.liver"} 7.0' in text
        assert 'radstream_build_info{component="infer",pipeline="liver"' in text

        assert httpx.get(f"{base}/healthz").status_code == 200
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 200 and r.json()["checks"]["db"]["ok"] is True

        healthy.clear()
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["db"] == {"ok": False, "detail": "database down",
                                             "seconds": r.json()["checks"]["db"]["seconds"]}
        assert 'radstream_process_ready{component="infer"} 0.0' in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/nope").status_code == 404


def test_a_raising_or_hanging_check_means_not_ready() -> None:
    gate = threading.Event()
    obs = Observability("dispatch", 0, readiness_timeout_s=0.2)

    def boom() -> bool:
        raise ConnectionError("kafka unreachable")

    obs.add_readiness_check("kafka", boom)
    obs.add_readiness_check("slow", lambda: gate.wait(5))
    ok, results = obs.readiness()
    gate.set()
    assert not ok
    by = {r.name: r for r in results}
    assert by["kafka"].detail == "ConnectionError: kafka unreachable"
    assert by["slow"].detail.startswith("timed out")
    obs.stop()


def test_liveness_fails_when_the_loop_stops_beating() -> None:
    obs = Observability("aggregate", 0, liveness_stale_s=0.05)
    assert obs.liveness()[0]  # never beaten yet: alive (still starting)
    obs.beat()
    assert obs.liveness()[0]
    eventually(lambda: not obs.liveness()[0], timeout=2.0, what="a stale beat")
    ok, body = obs.liveness()
    assert not ok and body["beat_age_s"] > 0.05


def test_port_zero_is_off_and_a_busy_port_is_not_fatal() -> None:
    assert Observability("web", 0).start() == 0
    port = free_port()
    first = Observability("a", port)
    assert first.start() == port
    second = Observability("b", port)
    assert second.start() == 0  # logged, the process goes on
    first.stop()
    second.stop()


def test_ports_come_from_settings_and_env_merges_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSTREAM_OBSERVABILITY__PORTS__INFER", "0")
    monkeypatch.setenv("RADSTREAM_OBSERVABILITY__ADDRESS", "0.0.0.0")
    s = load_settings()
    assert s.observability.port_for("infer") == 0
    assert s.observability.port_for("sink_results") == 9114
    assert s.observability.port_for("unknown") == 0
    obs = Observability.for_component(s, "dispatch")
    assert (obs.port, obs.address) == (9112, "0.0.0.0")
    assert Observability.for_component(s, "dispatch", port=1234).port == 1234


def test_secrets_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("RADSTREAM_"):
            monkeypatch.delenv(k)
    (tmp_path / "site").write_text("site-secret-from-file\n")
    (tmp_path / "pg").write_text("pg-secret-from-file")
    monkeypatch.setenv("RADSTREAM_SITE_SECRET_FILE", str(tmp_path / "site"))
    monkeypatch.setenv("RADSTREAM_POSTGRES__PASSWORD_FILE", str(tmp_path / "pg"))
    s = Settings()
    assert s.site_secret.get_secret_value() == "site-secret-from-file"
    assert s.postgres.password.get_secret_value() == "pg-secret-from-file"
    assert s.postgres.port == 5432  # the nested model keeps its other defaults
    assert "secret-from-file" not in repr(s) + str(s.redacted())
    # the plain variable wins over its _FILE form
    monkeypatch.setenv("RADSTREAM_SITE_SECRET", "plain")
    assert Settings().site_secret.get_secret_value() == "plain"
    # a _FILE naming a missing file is an error, not a silent default
    monkeypatch.setenv("RADSTREAM_WEB__SESSION_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_fields_named_file_are_not_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSTREAM_INGEST__TLS__CERT_FILE", str(tmp_path / "not-yet-there.pem"))
    monkeypatch.setenv("RADSTREAM_NO_SUCH_SETTING_FILE", str(tmp_path / "missing"))
    s = Settings()
    assert s.ingest.tls.cert_file == tmp_path / "not-yet-there.pem"
