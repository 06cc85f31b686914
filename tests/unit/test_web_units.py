"""Unit tests of the web app's pieces that need no server: passwords, LDAP configuration, plots, SEG parsing."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from radstream.settings import LdapSettings, Settings
from radstream.web.images import _window, best_slice, overlay_png
from radstream.web.ldap_auth import ldap_bind, server_for, user_dn
from radstream.web.plots import volume_over_time
from radstream.web.security import safe_next
from radstream.web.users import UserError, check_username, hash_password

pytestmark = pytest.mark.unit


def test_password_hash_is_argon2id_and_salted() -> None:
    a, b = hash_password("a long password"), hash_password("a long password")
    assert a.startswith("$argon2id$") and a != b
    with pytest.raises(UserError):
        hash_password("short")


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "<script>", "o'neil", "uid=x,dc=y"])
def test_bad_usernames_refused(name: str) -> None:
    with pytest.raises(UserError):
        check_username(name)


def test_ldap_off_by_default_and_dn_escaped() -> None:
    cfg = Settings().web.ldap
    assert cfg.enabled is False
    assert ldap_bind(cfg, "alice", "secret") is False  # disabled: never binds
    on = LdapSettings(enabled=True, user_dn_template="uid={username},ou=people,dc=example,dc=org")
    assert user_dn(on, "alice") == "uid=alice,ou=people,dc=example,dc=org"
    # a crafted user name cannot add RDNs to the DN
    assert user_dn(on, "x,ou=admins") == "uid=x\\,ou\\=admins,ou=people,dc=example,dc=org"
    ad = LdapSettings(enabled=True, user_dn_template="{username}@example.org", server_uri="ldaps://dc.example.org")
    assert user_dn(ad, "bob") == "bob@example.org"
    assert server_for(ad).ssl is True


def test_ldap_env_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSTREAM_WEB__LDAP__ENABLED", "true")
    monkeypatch.setenv("RADSTREAM_WEB__LDAP__SERVER_URI", "ldap://127.0.0.1:1")
    monkeypatch.setenv("RADSTREAM_WEB__LDAP__START_TLS", "false")
    cfg = Settings().web.ldap
    assert cfg.enabled and cfg.server_uri == "ldap://127.0.0.1:1"
    # empty password (an anonymous bind servers accept) and an unreachable server both fail closed
    assert ldap_bind(cfg, "alice", "") is False
    assert ldap_bind(cfg.model_copy(update={"timeout_s": 1.0}), "alice", "secret") is False


@pytest.mark.parametrize("target,expected", [
    ("/worklist", "/worklist"), ("//evil.example", "/"), ("https://evil.example", "/"), ("/\\evil", "/"),
    ("", "/"), (None, "/"), ("/studies/1.2.3?x=1", "/studies/1.2.3?x=1"),
])
def test_safe_next(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_plot_escapes_and_marks_current() -> None:
    svg = str(volume_over_time([(date(2024, 1, 1), 2.0, False), (date(2024, 4, 1), 3.0, True)], baseline=2.0,
                               threshold_pct=25.0, unit="<mL>", title="<script>"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count('class="point"') == 2 and 'class="threshold"' in svg


def test_overlay_and_window() -> None:
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[2, 2:5, 2:5] = 1
    assert best_slice(labels) == 2
    png = overlay_png(labels, 2)
    assert png.startswith(b"\x89PNG")
    w = _window(np.arange(100, dtype=np.float32).reshape(1, 10, 10))
    assert w.dtype == np.uint8 and w.min() == 0 and w.max() == 255


def test_session_key_is_never_the_public_placeholder(tmp_path: Path) -> None:
    import stat

    from radstream.settings import DEFAULT_SESSION_SECRET
    from radstream.web.security import session_key

    s = Settings(home=tmp_path / "home")  # type: ignore[arg-type]
    key, path = session_key(s)
    assert key != DEFAULT_SESSION_SECRET and len(key) >= 48 and path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert session_key(s) == (key, path)  # kept: sessions survive a restart
    other, _ = session_key(Settings(home=tmp_path / "other"))  # type: ignore[arg-type]
    assert other != key  # no two installations share a key
    given = Settings(home=tmp_path / "home", web={"session_secret": "x" * 40})  # type: ignore[arg-type]
    assert session_key(given) == ("x" * 40, None)
    empty = Settings(home=tmp_path / "home", web={"session_secret": ""})  # type: ignore[arg-type]
    assert session_key(empty) == (key, path)
    path.write_text("short\n")
    with pytest.raises(RuntimeError, match="no usable secret"):
        session_key(s)
