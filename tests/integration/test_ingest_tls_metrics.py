"""DICOM TLS on the ingest SCP, and its Prometheus metrics over HTTP."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from radstream.producers.sample_series import write_series
from radstream.producers.scu import send_paths

from radstream.devenv.process import free_port
from radstream.events.models import InstanceReceived
from radstream.settings import IngestTlsSettings, Settings
from tests.integration.ingest_support import consume, ingest_settings, running_ingest
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.dicom]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "scp.crt", tmp / "scp.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def _metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_tls_store_and_metrics(kafka_settings: Settings, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    metrics_port = free_port()
    s = ingest_settings(kafka_settings, metrics_port=metrics_port,
                        tls=IngestTlsSettings(cert_file=cert, key_file=key))
    files = write_series(tmp_path / "series", 3, rows=32, columns=32, seed=5)
    with running_ingest(s) as server:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        summary = send_paths(files, port=server.port, tls=client)
        assert summary.statuses == {"0x0000": 3}, summary.line()
        # a plain (non-TLS) sender cannot store anything
        plain = send_paths(files[:1], port=server.port, timeout_s=5)
        assert plain.ok == 0
        events = [e for e in consume(s, s.topic("instances"), 3, timeout=30) if isinstance(e, InstanceReceived)]
        assert len({e.sop_instance_uid for e in events}) == 3
        # write-ahead outbox (the default): each event was fsynced in the outbox, then drained
        eventually(lambda: "radstream_ingest_outbox_depth 0.0" in _metrics(metrics_port), timeout=15,
                   what="the outbox to drain")
        text = _metrics(metrics_port)
    assert 'radstream_ingest_instances_total{called_ae="RADSTREAM"} 3.0' in text
    assert "radstream_ingest_bytes_total" in text
    assert "radstream_ingest_store_seconds_count 3.0" in text
    assert 'radstream_ingest_publish_seconds_count{path="outbox"} 3.0' in text
    assert "radstream_ingest_outbox_depth 0.0" in text
    assert "SYN-0001" not in text  # no Patient ID in metrics
