"""Security of the review app on the real PostgreSQL and Kafka: anonymous refusal, roles, CSRF, escaping, SQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
from starlette.testclient import TestClient

from radstream.db.connect import connect
from radstream.settings import Settings
from radstream.web import create_app
from tests.integration.web_seed import PASSWORD, Seeded, seed

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def seeded(pg_settings: Settings) -> tuple[Settings, Seeded]:
    return pg_settings, seed(pg_settings)


@pytest.fixture
def app_client(seeded: tuple[Settings, Seeded]) -> Iterator[TestClient]:
    settings, _ = seeded
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


def csrf_of(client: TestClient, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    m = CSRF.search(r.text)
    assert m, "no CSRF token on the page"
    return m.group(1)


def sign_in(client: TestClient, user: str, password: str = PASSWORD) -> None:
    token = csrf_of(client, "/login")
    r = client.post("/login", data={"username": user, "password": password, "csrf_token": token, "next": "/"},
                    follow_redirects=False)
    assert r.status_code == 303, r.text


def all_paths(s: Seeded) -> list[str]:
    b = s.brain_results[-1]
    return ["/", "/worklist", f"/results/{b}", f"/results/{b}/slices/0.png", f"/results/{b}/overlay/0.png",
            "/qc", f"/qc/{s.hip_result}", f"/studies/{s.brain_study_uids[0]}", f"/accession/{s.brain_accessions[0]}",
            "/ops", "/ops/live", "/api/ops", "/report", "/report.csv", "/admin/users", "/admin/blinding",
            "/admin/audit"]


def test_every_page_refuses_anonymous(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    _, s = seeded
    for path in all_paths(s):
        r = app_client.get(path, follow_redirects=False)
        if path.startswith("/api/"):
            assert r.status_code == 401, path
        else:
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login?next="), path
        assert s.brain_accessions[0] not in r.text and "DOE" not in r.text, path
    posts = [f"/results/{s.brain_results[0]}/feedback", f"/qc/{s.hip_result}", "/admin/users"]
    token = csrf_of(app_client, "/login")  # a valid anonymous session token is still not a sign-in
    for path in posts:
        r = app_client.post(path, data={"csrf_token": token, "decision": "APPROVED", "action": "add",
                                        "username": "evil", "role": "admin", "password": "x" * 10},
                            follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
    with connect(seeded[0]) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE username = 'evil'").fetchone() == (0,)


def test_wrong_password_and_disabled_user_refused(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    settings, _ = seeded
    token = csrf_of(app_client, "/login")
    r = app_client.post("/login", data={"username": "reader1", "password": "wrong password", "csrf_token": token})
    assert r.status_code == 401
    sign_in(app_client, "reader1")
    assert app_client.get("/worklist").status_code == 200
    with connect(settings, autocommit=True) as conn:
        conn.execute("UPDATE users SET disabled = true WHERE username = 'reader1'")
    r = app_client.get("/worklist", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_role_separation(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    _, s = seeded
    sign_in(app_client, "reader1")
    for path in ["/qc", f"/qc/{s.hip_result}", "/ops", "/ops/live", "/report", "/report.csv", "/admin/users",
                 "/admin/blinding", "/admin/audit"]:
        assert app_client.get(path, follow_redirects=False).status_code == 403, path
    assert app_client.get("/api/ops").status_code == 403
    # a hip case awaiting QC is hidden from readers, even by direct link
    assert app_client.get(f"/results/{s.hip_result}").status_code == 404
    assert app_client.get(f"/accession/{s.hip_accession}").status_code == 404
    assert s.hip_accession not in app_client.get("/worklist").text
    # blinded liver result: readers see the hash, never the model
    page = app_client.get(f"/results/{s.liver_result}").text
    assert s.liver_hash in page and "liver-ref" not in page
    assert "liver-ref" not in app_client.get("/worklist?pipeline=liver").text
    token = csrf_of(app_client, "/worklist")
    r = app_client.post(f"/qc/{s.hip_result}", data={"csrf_token": token, "decision": "APPROVED"})
    assert r.status_code == 403
    app_client.post("/logout", data={"csrf_token": token})
    sign_in(app_client, "qc1")
    assert app_client.get("/worklist", follow_redirects=False).status_code == 403
    assert app_client.get("/admin/users").status_code == 403
    assert app_client.get("/qc").status_code == 200
    token = csrf_of(app_client, "/qc")
    app_client.post("/logout", data={"csrf_token": token})
    sign_in(app_client, "admin1")
    page = app_client.get("/admin/blinding").text
    assert s.liver_hash in page and "liver-ref" in page


def test_forms_without_valid_csrf_are_refused(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    settings, s = seeded
    # sign-in itself needs the token
    r = app_client.post("/login", data={"username": "admin1", "password": PASSWORD})
    assert r.status_code == 403
    sign_in(app_client, "admin1")
    good = csrf_of(app_client, "/admin/users")
    targets = [
        (f"/results/{s.brain_results[0]}/feedback", {"f0_agree": "agree", "comment": "csrf"}),
        (f"/qc/{s.hip_result}", {"decision": "APPROVED"}),
        ("/admin/users", {"action": "add", "username": "csrfuser", "role": "admin", "password": "p" * 12}),
        ("/logout", {}),
    ]
    for path, data in targets:
        for bad in (None, "", good[:-2] + "xx"):
            payload = dict(data) if bad is None else {**data, "csrf_token": bad}
            r = app_client.post(path, data=payload, follow_redirects=False)
            assert r.status_code == 403, (path, bad)
    with connect(settings) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE username = 'csrfuser'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action IN ('feedback', 'qc_decision')"
                            ).fetchone() == (0,)
    assert app_client.get("/admin/users").status_code == 200  # still signed in: logout was refused too
    # a token from another session does not work either
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as other:
        sign_in(other, "admin1")
        r = other.post("/admin/users", data={"csrf_token": good, "action": "add", "username": "x2",
                                             "role": "reader", "password": "p" * 12})
        assert r.status_code == 403


def test_markup_in_patient_name_and_series_description_is_escaped(seeded: tuple[Settings, Seeded],
                                                                  app_client: TestClient) -> None:
    _, s = seeded
    sign_in(app_client, "reader1")
    for path in [f"/results/{s.xss_result}", "/worklist"]:
        page = app_client.get(path).text
        assert "<script>alert" not in page, path
        assert "&lt;script&gt;alert(" in page, path
    r = app_client.get(f"/results/{s.xss_result}")
    assert "script-src 'self'" in r.headers["content-security-policy"]


SQL_PROBES = ["' OR 1=1 --", "'; DROP TABLE results; --", "%", "_", "\\", "\" OR \"\"=\"", "1) OR (1=1",
              "ACC%' UNION SELECT password_hash FROM users --", "\x00"]


def test_sql_metacharacters_in_filters_are_harmless(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    settings, s = seeded
    sign_in(app_client, "admin1")
    everything = app_client.get("/worklist").text
    assert all(a in everything for a in s.brain_accessions)
    for probe in SQL_PROBES:
        for key in ("q", "pipeline", "status", "qc", "from", "to"):
            r = app_client.get("/worklist", params={key: probe})
            assert r.status_code == 200, (key, probe)
            assert "argon2" not in r.text
            if key in ("q", "pipeline") and probe != "\x00":  # NUL alone is dropped: no filter
                # the probe is a literal: it matches nothing (no accession holds it), never everything
                assert all(a not in r.text for a in s.brain_accessions), (key, probe)
        for path in ("/qc", "/report"):
            assert app_client.get(path, params={"status": probe, "pipeline": probe}).status_code == 200
        assert app_client.get("/accession/" + quote(probe, safe="")).status_code == 404
        assert app_client.get("/studies/" + quote(probe, safe="")).status_code == 404
    # literal matching still works
    assert s.brain_accessions[1] in app_client.get("/worklist", params={"q": s.brain_accessions[1]}).text
    with connect(settings) as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] >= 6  # type: ignore[index]
        try:
            conn.execute("SELECT 1 FROM users LIMIT 1")
        except psycopg.Error as exc:  # pragma: no cover - would mean a table was dropped
            pytest.fail(f"users table damaged: {exc}")


def test_results_views_are_audited(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    settings, s = seeded
    sign_in(app_client, "reader2")
    assert app_client.get(f"/results/{s.brain_results[1]}").status_code == 200
    with connect(settings) as conn:
        row = conn.execute("""SELECT username, patient_key, study_instance_uid FROM audit_log
                              WHERE action = 'view_result' AND target_id = %s""", (s.brain_results[1],)).fetchone()
    assert row == ("reader2", "pk-brain-1", s.brain_study_uids[1])


def test_deep_links_redirect_after_sign_in(seeded: tuple[Settings, Seeded], app_client: TestClient) -> None:
    _, s = seeded
    r = app_client.get(f"/accession/{s.brain_accessions[2]}", follow_redirects=False)
    assert r.status_code == 303
    login_page = app_client.get(r.headers["location"])
    token = CSRF.search(login_page.text).group(1)  # type: ignore[union-attr]
    nxt = re.search(r'name="next" value="([^"]+)"', login_page.text).group(1)  # type: ignore[union-attr]
    assert nxt == f"/accession/{s.brain_accessions[2]}"
    r = app_client.post("/login", data={"username": "reader1", "password": PASSWORD, "csrf_token": token,
                                        "next": nxt}, follow_redirects=False)
    assert r.headers["location"] == nxt
    r = app_client.get(nxt, follow_redirects=False)
    assert r.headers["location"] == f"/results/{s.brain_results[2]}"
    r = app_client.get(f"/studies/{s.brain_study_uids[0]}", follow_redirects=False)
    assert r.headers["location"] == f"/results/{s.brain_results[0]}"
    # an open redirect is not possible
    token = csrf_of(app_client, "/worklist")
    app_client.post("/logout", data={"csrf_token": token})
    token = csrf_of(app_client, "/login")
    r = app_client.post("/login", data={"username": "reader1", "password": PASSWORD, "csrf_token": token,
                                        "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/worklist"


def _signed_session(key: str, session: dict[str, object]) -> str:
    """A session cookie as Starlette's SessionMiddleware signed one (itsdangerous over base64 JSON): the old format."""
    import base64
    import json

    import itsdangerous

    data = base64.b64encode(json.dumps(session).encode())
    return itsdangerous.TimestampSigner(key).sign(data).decode()


def test_a_cookie_signed_with_the_public_placeholder_opens_nothing(seeded: tuple[Settings, Seeded]) -> None:
    """The shipped session secret is public: the app never signs with it (development: a random key under home;
    production: it refuses to start). A cookie signed with it, for a session that really exists, opens nothing."""
    from radstream.settings import DEFAULT_SESSION_SECRET
    from radstream.web.security import session_key
    from radstream.web.sessions import COOKIE, SessionStore

    settings, _ = seeded
    assert settings.web.session_secret.get_secret_value() == DEFAULT_SESSION_SECRET
    assert settings.environment == "development"
    with TestClient(create_app(settings), base_url="http://127.0.0.1", follow_redirects=False) as client:
        # the old cookie format, signed with the placeholder, claiming the admin
        client.cookies.set(COOKIE, _signed_session(DEFAULT_SESSION_SECRET, {"user": "admin1"}))
        r = client.get("/admin/users")
        assert r.status_code in (302, 303, 307) and "/login" in r.headers["location"]
        # a real admin session in the database, its id signed with the placeholder
        with connect(settings, autocommit=True) as conn:
            sid, _ = SessionStore(settings, session_key(settings)[0]).create(conn, "admin1")
        client.cookies.set(COOKIE, SessionStore(settings, DEFAULT_SESSION_SECRET).sign(sid))
        r = client.get("/admin/users")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        # the control: the same session id signed with the key the app really uses opens the page
        key, path = session_key(settings)
        assert path is not None and key != DEFAULT_SESSION_SECRET
        client.cookies.set(COOKIE, SessionStore(settings, key).sign(sid))
        assert client.get("/admin/users").status_code == 200
        # a session id alone (the SHA-256 in the table is not it either) opens nothing
        client.cookies.set(COOKIE, sid)
        assert client.get("/admin/users").status_code == 303
