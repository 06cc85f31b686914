"""Server-side sessions, sign-in throttling, bounded bodies and secure defaults of the review app, on the real
PostgreSQL: a captured session cookie stops working after sign-out, disabling, a password change, the idle and
absolute timeouts and a new session secret; a throttled account lets its user in again after the lock."""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from radstream.cli import context
from radstream.cli.main import app as cli_app
from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.secrets import PlaceholderSecret
from radstream.settings import Settings
from radstream.web import create_app
from radstream.web.sessions import COOKIE
from radstream.web.users import add_user
from tests.integration.web_seed import PASSWORD, Seeded, seed

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FAILED = "Unknown user name or wrong password."
USERS = (("reader1", "reader"), ("reader2", "reader"), ("qc1", "qc"), ("admin1", "admin"))


def with_web(s: Settings, **web: Any) -> Settings:
    return s.model_copy(update={"web": s.web.model_copy(update=web)})


@pytest.fixture
def accounts(pg_settings: Settings) -> Settings:
    """The schema and one account per role, no results (fast)."""
    migrate(pg_settings)
    with connect(pg_settings, autocommit=True) as conn:
        for name, role in USERS:
            add_user(conn, name, role, PASSWORD, name.title())
    return pg_settings


def client_for(settings: Settings, base_url: str = "http://127.0.0.1") -> TestClient:
    return TestClient(create_app(settings), base_url=base_url, follow_redirects=False)


def csrf_of(client: TestClient, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    m = CSRF.search(r.text)
    assert m, "no CSRF token on the page"
    return m.group(1)


def attempt(client: TestClient, user: str, password: str) -> Any:
    token = csrf_of(client, "/login")
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token, "next": "/"})


def sign_in(client: TestClient, user: str, password: str = PASSWORD) -> str:
    """Sign in; the session cookie the browser got."""
    r = attempt(client, user, password)
    assert r.status_code == 303, r.text[:300]
    value = client.cookies.get(COOKIE)
    assert value
    return value


def replay(settings: Settings, cookie: str, path: str = "/worklist") -> Any:
    """The captured cookie, sent by a fresh browser."""
    with client_for(settings) as other:
        other.cookies.set(COOKIE, cookie)
        return other.get(path)


def refused(r: Any) -> bool:
    if r.request.url.path.startswith("/api/"):
        return bool(r.status_code == 401)
    return r.status_code == 303 and r.headers["location"].startswith("/login")


def sessions_of(settings: Settings, user: str) -> int:
    with connect(settings) as conn:
        row = conn.execute("SELECT count(*) FROM web_sessions WHERE username = %s", (user,)).fetchone()
    return int(row[0]) if row else 0


def cli(settings: Settings, *args: str, stdin: str | None = None) -> Any:
    p = settings.postgres
    env = {"RADSTREAM_POSTGRES__HOST": p.host, "RADSTREAM_POSTGRES__PORT": str(p.port),
           "RADSTREAM_POSTGRES__USER": p.user, "RADSTREAM_POSTGRES__PASSWORD": p.password.get_secret_value(),
           "RADSTREAM_POSTGRES__DATABASE": p.database}
    context.set_config(None)
    try:
        return CliRunner().invoke(cli_app, list(args), input=stdin, env=env)
    finally:
        context.set_config(None)


def test_logout_disable_and_password_change_each_end_a_live_session(accounts: Settings) -> None:
    s = accounts
    with client_for(s) as c:
        cookie = sign_in(c, "reader1")
        assert replay(s, cookie).status_code == 200  # the captured cookie works from anywhere...
        assert c.post("/logout", data={"csrf_token": csrf_of(c, "/worklist")}).status_code == 303
    assert refused(replay(s, cookie))  # ...until sign-out
    assert sessions_of(s, "reader1") == 0

    with client_for(s) as admin, client_for(s) as reader:
        cookie = sign_in(reader, "reader2")
        sign_in(admin, "admin1")
        assert replay(s, cookie).status_code == 200
        r = admin.post("/admin/users", data={"csrf_token": csrf_of(admin, "/admin/users"), "action": "disable",
                                             "username": "reader2"})
        assert r.status_code == 303
        assert refused(replay(s, cookie)) and refused(reader.get("/worklist"))
        assert sessions_of(s, "reader2") == 0
        admin.post("/admin/users", data={"csrf_token": csrf_of(admin, "/admin/users"), "action": "enable",
                                         "username": "reader2"})
        assert refused(replay(s, cookie))  # enabling again does not bring the old session back
        sign_in(reader, "reader2")  # a new sign-in does

    with client_for(s) as c:
        cookie = sign_in(c, "admin1")
        assert replay(s, cookie, "/api/ops").status_code == 200
        r = cli(s, "users", "passwd", "admin1", "--password-stdin", stdin="a brand new passphrase\n")
        assert r.exit_code == 0, r.output
        assert "sessions ended" in r.output
        assert refused(replay(s, cookie, "/api/ops")) and refused(replay(s, cookie, "/admin/users"))
        assert attempt(c, "admin1", PASSWORD).status_code == 401
        sign_in(c, "admin1", "a brand new passphrase")
    with connect(s) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id").fetchall()]
    assert "logout" in actions and "user_disable" in actions and actions.count("login") >= 4


def test_idle_timeout(accounts: Settings) -> None:
    s = with_web(accounts, session_idle_s=3, session_absolute_s=3600)
    with client_for(s) as c:
        cookie = sign_in(c, "reader1")
        for _ in range(3):  # activity keeps it alive, past the idle period counted from sign-in
            time.sleep(1.5)
            assert replay(s, cookie).status_code == 200
        time.sleep(4)
        assert refused(replay(s, cookie))
        assert sessions_of(s, "reader1") == 0  # the dead row is gone


def test_absolute_timeout_is_not_extended_by_opening_results(pg_settings: Settings) -> None:
    s = with_web(pg_settings, session_absolute_s=5, session_idle_s=3600)
    seeded = seed(s)
    result = seeded.brain_results[-1]
    with client_for(s) as c:
        sign_in(c, "reader1")
        signed_in = time.monotonic()
        with connect(s) as conn:
            (expires,) = conn.execute("SELECT expires_at FROM web_sessions WHERE username = 'reader1'").fetchone()  # type: ignore[misc]
        assert c.get(f"/results/{result}").status_code == 200
        with connect(s) as conn:
            expires_now, data = conn.execute(
                "SELECT expires_at, data FROM web_sessions WHERE username = 'reader1'").fetchone()  # type: ignore[misc]
        assert expires_now == expires  # opening a result does not extend the session
        assert isinstance(data["opened"][result], float)  # the review clock lives in the session row
        while time.monotonic() - signed_in < 4:
            assert c.get(f"/results/{result}").status_code == 200
            time.sleep(0.5)
        time.sleep(max(0.0, 5.5 - (time.monotonic() - signed_in)))
        assert refused(c.get(f"/results/{result}"))


def test_a_new_session_secret_ends_every_session(accounts: Settings) -> None:
    from pydantic import SecretStr

    first = with_web(accounts, session_secret=SecretStr("the-first-session-secret-of-this-site"))
    with client_for(first) as c:
        cookie = sign_in(c, "reader1")
    assert replay(first, cookie).status_code == 200
    rotated = with_web(accounts, session_secret=SecretStr("the-second-session-secret-of-this-site"))
    assert refused(replay(rotated, cookie))


def test_throttle_locks_known_and_unknown_names_alike_and_lets_the_user_in_later(accounts: Settings) -> None:
    s = with_web(accounts, login_free_failures=2, login_free_failures_per_address=100, login_window_s=4.0,
                 login_lockout_s=2.0, login_lockout_max_s=2.0)
    with client_for(s) as c:
        for name in ("reader1", "no-such-user"):
            answers = [attempt(c, name, "wrong password!") for _ in range(3)]
            assert [r.status_code for r in answers] == [401, 401, 401]
            assert all(FAILED in r.text for r in answers)
            locked = attempt(c, name, PASSWORD)  # locked: even the right password is refused, unchecked
            assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
            assert 1 <= int(locked.headers["retry-after"]) <= 2
            assert FAILED not in locked.text
        assert refused(c.get("/worklist"))
        time.sleep(2.2)  # the lock ends by itself
        sign_in(c, "reader1")  # the legitimate user is let in
        assert c.get("/worklist").status_code == 200
        with connect(s) as conn:
            assert conn.execute("SELECT count(*) FROM login_throttle WHERE kind = 'user' AND subject = 'reader1'"
                                ).fetchone() == (0,)  # a success clears the account's count
    # failures older than the window are forgotten: the unknown name starts again at one
    time.sleep(4.2)
    with client_for(s) as c:
        assert [attempt(c, "no-such-user", "wrong").status_code for _ in range(3)] == [401, 401, 401]
    with connect(s) as conn:
        rows = conn.execute("SELECT username, action, detail FROM audit_log WHERE action LIKE 'login%%' "
                            "ORDER BY id").fetchall()
    by_action: dict[str, list[Any]] = {}
    for user, action, detail in rows:
        by_action.setdefault(action, []).append((user, detail))
    assert {u for u, _ in by_action["login_failed"]} == {"reader1", "no-such-user"}
    assert {(u, d["kind"]) for u, d in by_action["login_locked"]} == {("reader1", "user"), ("no-such-user", "user")}
    assert {u for u, _ in by_action["login_throttled"]} == {"reader1", "no-such-user"}
    assert ("reader1", {}) in [(u, d) for u, d in by_action["login"]]


def test_throttle_per_client_address(accounts: Settings) -> None:
    s = with_web(accounts, login_free_failures=100, login_free_failures_per_address=3, login_lockout_s=60.0)
    with client_for(s) as c:
        assert [attempt(c, f"guess{i}", "wrong password").status_code for i in range(4)] == [401] * 4
        r = attempt(c, "reader1", PASSWORD)  # a name never tried, from the same address
        assert r.status_code == 429
    with connect(s) as conn:
        locks = conn.execute("SELECT detail FROM audit_log WHERE action = 'login_locked'").fetchall()
    assert [d["kind"] for (d,) in locks] == ["addr"] and locks[0][0]["address"] == "testclient"


def test_unknown_and_known_users_take_the_same_time(accounts: Settings) -> None:
    with client_for(accounts) as c:
        def timed(name: str) -> float:
            token = csrf_of(c, "/login")
            t0 = time.perf_counter()
            r = c.post("/login", data={"username": name, "password": "not the password", "csrf_token": token})
            assert r.status_code == 401 and FAILED in r.text
            return time.perf_counter() - t0

        known = statistics.median(timed("reader1") for _ in range(3))
        unknown = statistics.median(timed(f"nobody{i}") for i in range(3))
    # both verify one argon2 hash; skipping it for unknown names would make them ~10x faster
    assert 1 / 3 < unknown / known < 3, (known, unknown)


def test_slice_images_are_not_cached(pg_settings: Settings) -> None:
    seeded: Seeded = seed(pg_settings)
    with client_for(pg_settings) as c:
        sign_in(c, "reader1")
        for kind in ("slices", "overlay"):
            r = c.get(f"/results/{seeded.brain_results[-1]}/{kind}/0.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.headers["cache-control"] == "no-store"


def _asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, int]:
    """One POST straight into the ASGI app: (status, body messages it read)."""
    reads = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False} if reads == 1 else {
            "type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "scheme": "http", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000),
             "http_version": "1.1", "root_path": "", "asgi": {"version": "3.0"}}
    anyio.run(app, scope, receive, send)
    return status, reads


@pytest.fixture
def live_server(accounts: Settings) -> Iterator[tuple[Settings, int]]:
    import uvicorn

    from radstream.devenv.process import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(accounts), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield accounts, port
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_anonymous_300_mb_content_length_gets_413_unread(live_server: tuple[Settings, int]) -> None:
    s, port = live_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /results/x/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: " + str(300 * 1024 * 1024).encode() + b"\r\n\r\n")
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "no-store" in answer.lower()
    for path in ("/login", "/admin/users", "/qc/x"):
        assert _asgi_post(create_app(s), path, [(b"content-length", str(300 * 1024 * 1024).encode())]) == (413, 0)


def test_bodies_are_bounded_and_refused_before_they_are_read(accounts: Settings) -> None:
    s = with_web(accounts, max_upload_mb=1)
    app = create_app(s)
    form = b"csrf_token=x&decision=APPROVED"
    # not signed in: refused before the body is read (pages: to the sign-in page, APIs: 401)
    assert _asgi_post(app, "/qc/some-result", [(b"content-length", str(len(form)).encode())], form) == (303, 0)
    assert _asgi_post(app, "/admin/users", [], form) == (303, 0)
    with client_for(s) as c:
        sign_in(c, "admin1")
        token = csrf_of(c, "/admin/users")
        big = b"csrf_token=" + token.encode() + b"&comment=" + b"x" * (70 * 1024)
        r = c.post("/admin/users", content=iter([big[:40000], big[40000:]]),  # chunked: no Content-Length
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        r = c.post("/results/some-result/feedback", data={"csrf_token": token},
                   files={"seg_file": ("seg.dcm", b"\0" * (3 * 1024 * 1024), "application/dicom")})
        assert r.status_code == 413  # over max_upload_mb, with a Content-Length
        chunks = iter([b"--b\r\n", *[b"\0" * (1024 * 1024)] * 3, b"--b--\r\n"])
        r = c.post("/results/some-result/feedback", content=chunks,
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413  # the same, chunked
        # a cross-site form post is refused before its body is read, signed in or not
        r = c.post("/admin/users", data={"csrf_token": token, "action": "add", "username": "xsite",
                                         "role": "admin", "password": "a fine long password"},
                   headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        assert c.get("/admin/users").status_code == 200  # still signed in
    with connect(s) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE username = 'xsite'").fetchone() == (0,)


def test_production_refuses_the_placeholder_and_defaults_to_secure_cookies(accounts: Settings) -> None:
    from pydantic import SecretStr

    prod = accounts.model_copy(update={"environment": "production"})
    with pytest.raises(PlaceholderSecret, match="RADSTREAM_WEB__SESSION_SECRET"):
        create_app(prod)
    prod = with_web(prod, session_secret=SecretStr("a-real-production-session-secret"))
    with client_for(prod, "https://radstream.example") as c:
        r = c.get("/login")
        assert "max-age=" in r.headers["strict-transport-security"]
        token = CSRF.search(r.text).group(1)  # type: ignore[union-attr]
        r = c.post("/login", data={"username": "reader1", "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert c.get("/worklist").status_code == 200
    with client_for(accounts) as c:  # development, plain HTTP: no Secure, no HSTS
        r = c.get("/login")
        assert "strict-transport-security" not in r.headers and "Secure" not in r.headers["set-cookie"]


def test_password_policy_applies_to_users_add_passwd_and_the_admin_page(accounts: Settings) -> None:
    s = accounts
    for password, why in (("short pw", "at least 12"), ("Password2024!", "too common"),
                          ("carol.example", "user name")):
        r = cli(s, "users", "add", "carol.example", "--password-stdin", stdin=password + "\n")
        assert r.exit_code == 1 and why in r.output, r.output
    assert cli(s, "users", "add", "carol.example", "--password-stdin", stdin="a good long passphrase\n"
               ).exit_code == 0
    for password, why in (("short pw", "at least 12"), ("qwertyuiop123", "too common"),
                          ("CAROL.EXAMPLE", "user name")):
        r = cli(s, "users", "passwd", "carol.example", "--password-stdin", stdin=password + "\n")
        assert r.exit_code == 1 and why in r.output, r.output
    with client_for(s) as c:
        sign_in(c, "carol.example", "a good long passphrase")  # unchanged: every passwd above was refused
        c.post("/logout", data={"csrf_token": csrf_of(c, "/worklist")})
        sign_in(c, "admin1")
        r = c.post("/admin/users", data={"csrf_token": csrf_of(c, "/admin/users"), "action": "add",
                                         "username": "dave", "role": "reader", "password": "qwerty123456"})
        assert r.status_code == 400 and "too common" in r.text
