from __future__ import annotations

from pathlib import Path

import pytest

from radstream.patient_key import patient_key
from radstream.settings import load_settings

pytestmark = pytest.mark.unit


def test_defaults_follow_the_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("RADSTREAM_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert (s.dicom.port, s.dicom.ae_title) == (11112, "RADSTREAM")
    assert s.postgres.port == 5432
    assert (s.triton.http_port, s.triton.grpc_port) == (8000, 8001)
    assert s.web.port == 8080
    assert s.topic("instances") == "radstream.instances"


def test_env_overrides_file_and_file_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "radstream.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: filehost:1\n  default_partitions: 12\ndicom:\n  port: 104\n")
    monkeypatch.setenv("RADSTREAM_KAFKA__BOOTSTRAP_SERVERS", "envhost:2")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "envhost:2"
    assert s.kafka.default_partitions == 12
    assert s.dicom.port == 104


def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSTREAM_SITE_SECRET", "top-secret-value")
    monkeypatch.setenv("RADSTREAM_POSTGRES__PASSWORD", "pg-secret-value")
    s = load_settings()
    text = repr(s) + str(s) + str(s.redacted())
    assert "top-secret-value" not in text and "pg-secret-value" not in text
    assert s.site_secret.get_secret_value() == "top-secret-value"


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(cfg)


def test_patient_key_is_keyed_and_unambiguous() -> None:
    a = patient_key(b"secret", "12345", "HOSP")
    assert a == patient_key(b"secret", "12345", "HOSP")
    assert len(a) == 64 and "12345" not in a
    assert a != patient_key(b"other", "12345", "HOSP")
    assert a != patient_key(b"secret", "12345", "OTHER")
    assert patient_key(b"s", "BC", "A") != patient_key(b"s", "C", "AB")
