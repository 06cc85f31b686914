"""radstream.secrets: placeholders refused in production, random secrets in development, the site-secret fingerprint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from radstream.secrets import (
    FINGERPRINT_FILE,
    SPECS,
    PlaceholderSecret,
    SiteSecretChanged,
    blinding_salt,
    check_site_fingerprint,
    fingerprint,
    require,
    resolve,
    site_secret,
)
from radstream.settings import DEFAULT_BLINDING_SALT, DEFAULT_SESSION_SECRET, DEFAULT_SITE_SECRET, Settings

pytestmark = pytest.mark.unit

NAMES = ("site_secret", "web_session_secret", "blinding_salt")


def _settings(tmp_path: Path, environment: str, **values: object) -> Settings:
    # the suite's environment says development (tests/conftest.py) and env wins over init values:
    # model_copy sets the environment a test wants
    s = Settings(home=tmp_path / "home", **values)  # type: ignore[arg-type]
    return s.model_copy(update={"environment": environment})


@pytest.mark.parametrize("name", NAMES)
def test_production_refuses_the_placeholder_and_empty(tmp_path: Path, name: str) -> None:
    spec = SPECS[name]  # type: ignore[index]
    s = _settings(tmp_path, "production")
    with pytest.raises(PlaceholderSecret) as exc:
        resolve(s, name)  # type: ignore[arg-type]
    msg = str(exc.value)
    # the message names the setting and both ways to set it
    assert spec.setting in msg and spec.env in msg and f"{spec.env}_FILE" in msg and "refusing to start" in msg
    assert not (tmp_path / "home" / "secrets").exists()  # nothing generated in production
    empty = {"site_secret": {"site_secret": ""}, "web_session_secret": {"web": {"session_secret": "  "}},
             "blinding_salt": {"inference": {"blinding_salt": ""}}}[name]
    with pytest.raises(PlaceholderSecret, match="empty"):
        resolve(_settings(tmp_path, "production", **empty), name)  # type: ignore[arg-type]


def test_production_uses_a_given_secret_also_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "site_secret"
    secret_file.write_text("from-a-mounted-secret-file\n")
    monkeypatch.setenv("RADSTREAM_SITE_SECRET_FILE", str(secret_file))
    monkeypatch.setenv("RADSTREAM_INFERENCE__BLINDING_SALT", "salt-from-env")
    monkeypatch.setenv("RADSTREAM_ENVIRONMENT", "production")
    s = Settings(home=tmp_path / "home")  # type: ignore[arg-type]
    assert s.environment == "production"
    assert resolve(s, "site_secret").value == "from-a-mounted-secret-file"
    assert resolve(s, "site_secret").generated is None
    assert blinding_salt(s) == b"salt-from-env"
    with pytest.raises(PlaceholderSecret) as exc:
        require(s, "site_secret", "web_session_secret", "blinding_salt")
    assert "web.session_secret" in str(exc.value) and "site_secret is" not in str(exc.value)


def test_development_makes_random_secrets_once(tmp_path: Path) -> None:
    s = _settings(tmp_path, "development")
    seen = set()
    for name in NAMES:
        got = resolve(s, name)  # type: ignore[arg-type]
        assert got.generated == tmp_path / "home" / "secrets" / name
        assert stat.S_IMODE(got.generated.stat().st_mode) == 0o600
        assert stat.S_IMODE(got.generated.parent.stat().st_mode) == 0o700
        assert len(got.value) >= 48 and got.value not in (DEFAULT_SITE_SECRET, DEFAULT_SESSION_SECRET,
                                                          DEFAULT_BLINDING_SALT)
        assert resolve(s, name) == got  # kept across restarts  # type: ignore[arg-type]
        seen.add(got.value)
    assert len(seen) == 3  # one secret per purpose
    other = _settings(tmp_path / "other", "development")
    assert resolve(other, "site_secret").value != resolve(s, "site_secret").value  # none shared by two homes
    assert resolve(_settings(tmp_path, "development", site_secret="given"), "site_secret").value == "given"
    assert not list((tmp_path / "home" / "secrets").glob(".*"))  # no temporary files left behind


def test_the_site_secret_fingerprint_is_recorded_and_enforced(tmp_path: Path) -> None:
    s = _settings(tmp_path, "production", site_secret="the-original-site-secret")
    assert site_secret(s) == b"the-original-site-secret"
    path = s.store_root / FINGERPRINT_FILE
    record = json.loads(path.read_text())
    assert record["fingerprint"] == fingerprint(b"the-original-site-secret")
    assert "the-original-site-secret" not in path.read_text()  # the fingerprint never reveals the secret
    assert site_secret(s) == b"the-original-site-secret"  # same secret: fine, again and again
    other = s.model_copy(update={"site_secret": "a-different-secret"})
    with pytest.raises(SiteSecretChanged) as exc:
        site_secret(other)
    assert "RADSTREAM_ACCEPT_NEW_SITE_SECRET" in str(exc.value) and "--accept-new-site-secret" in str(exc.value)
    assert json.loads(path.read_text())["fingerprint"] == record["fingerprint"]  # unchanged
    accepted = other.model_copy(update={"accept_new_site_secret": True})
    assert site_secret(accepted) == b"a-different-secret"
    now = json.loads(path.read_text())
    assert now["fingerprint"] == fingerprint(b"a-different-secret")
    assert [h["fingerprint"] for h in now["history"]] == [record["fingerprint"]]
    with pytest.raises(SiteSecretChanged):  # and now the original is the stranger
        site_secret(s)
    path.write_text("not json")
    with pytest.raises(SiteSecretChanged, match="not readable"):
        check_site_fingerprint(s, b"x")


def test_ingest_server_refuses_placeholder_and_foreign_secret(tmp_path: Path) -> None:
    from radstream.producers.scp import IngestServer

    base = _settings(tmp_path, "production", ingest={"publish": False, "metrics_port": 0})
    with pytest.raises(PlaceholderSecret, match="RADSTREAM_SITE_SECRET"):
        IngestServer(base)
    IngestServer(base.model_copy(update={"site_secret": "first-secret-of-this-site"}))
    with pytest.raises(SiteSecretChanged):
        IngestServer(base.model_copy(update={"site_secret": "second-secret"}))


def test_blinding_operator_refuses_placeholder_in_production(tmp_path: Path) -> None:
    from radstream.consumers.operators.dicom_out import Blinding

    from radstream.pipelines.operators_spec import load_inference_pipeline

    spec = load_inference_pipeline("liver")
    params = next(op.params for op in spec.operators if op.op == "blinding")
    with pytest.raises(PlaceholderSecret, match=r"inference\.blinding_salt"):
        Blinding(_settings(tmp_path, "production"), spec, params)
    dev = _settings(tmp_path, "development")
    Blinding(dev, spec, params)  # development: a random salt under home
    assert (tmp_path / "home" / "secrets" / "blinding_salt").is_file()


@pytest.mark.parametrize("args", [["web", "--no-migrate"], ["ingest", "--no-publish", "--port", "0"]])
def test_processes_refuse_to_start_in_production(tmp_path: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSTREAM_")}
    env.update({"RADSTREAM_ENVIRONMENT": "production", "RADSTREAM_HOME": str(tmp_path / "home"),
                "RADSTREAM_OBSERVABILITY__PORTS": json.dumps(dict.fromkeys(["web", "ingest"], 0))})
    out = subprocess.run([sys.executable, "-m", "radstream.cli", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refusing to start" in out.stderr and "Traceback" not in out.stderr
    assert ("RADSTREAM_WEB__SESSION_SECRET" if args[0] == "web" else "RADSTREAM_SITE_SECRET_FILE") in out.stderr
