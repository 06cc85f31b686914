"""The review app's hardening pieces that need no server: password policy, back-off, cookie signing, body limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from radstream.settings import Settings
from radstream.web.limits import BodyLimitMiddleware, SecurityHeadersMiddleware
from radstream.web.passwords import PasswordPolicy, PasswordRejected, common_passwords
from radstream.web.sessions import SessionStore
from radstream.web.throttle import ThrottlePolicy
from radstream.web.users import UserError, hash_password

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("password,username,why", [
    ("short-1", None, "at least 12"),
    ("password1234", None, "too common"),
    ("Password2024!", None, "too common"),  # a common word with digits and a symbol appended
    ("QWERTYUIOP123", None, "too common"),
    ("correcthorsebatterystaple", None, "too common"),
    ("dr.who.the.doctor", "dr.who.the.doctor", "user name"),
    ("DR.WHO.THE.DOCTOR", "dr.who.the.doctor", "user name"),
    ("aaaaaaaaaaaaaaa", None, "too few"),
])
def test_password_policy_refuses(password: str, username: str | None, why: str) -> None:
    with pytest.raises(PasswordRejected, match=why):
        PasswordPolicy().check(password, username)
    with pytest.raises(UserError, match=why):  # what users add / passwd / the admin page call
        hash_password(password, username=username)


def test_password_policy_accepts_and_is_configurable(tmp_path: Path) -> None:
    PasswordPolicy().check("correct horse battery", "reader1")
    PasswordPolicy().check("s3cret-enough-now", "dr.who")
    assert len(common_passwords()) > 200 and "password" in common_passwords()
    with pytest.raises(PasswordRejected):
        PasswordPolicy(min_length=20).check("s3cret-enough-now")
    deny = tmp_path / "deny.txt"
    deny.write_text("# site words\nradiology-department\n")
    policy = PasswordPolicy(deny_file=deny)
    with pytest.raises(PasswordRejected, match="too common"):
        policy.check("Radiology-Department-7")
    s = Settings(web={"password_min_length": 16, "password_deny_file": str(deny)})  # type: ignore[arg-type]
    assert PasswordPolicy.from_settings(s) == PasswordPolicy(min_length=16, deny_file=deny)


def test_back_off_doubles_and_is_capped() -> None:
    p = ThrottlePolicy(free_user=3, lockout_s=30, lockout_max_s=300)
    assert [p.lock_s(n, 3) for n in range(1, 9)] == [0, 0, 0, 30, 60, 120, 240, 300]
    assert p.lock_s(10_000, 3) == 300


def test_session_cookie_signature(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, web={"session_secret": "k" * 40})  # type: ignore[arg-type]
    store = SessionStore(s, "k" * 40)
    sid = "A" * 43
    value = store.sign(sid)
    assert store.unsign(value) == sid
    assert SessionStore(s, "another-key-entirely").unsign(value) is None  # another secret: refused
    assert store.unsign(value[:-1] + ("B" if value[-1] != "B" else "C")) is None
    for bad in (None, "", sid, "x.y", value + ".z", "e30=.abc"):
        assert store.unsign(bad) is None
    assert store.anonymous_csrf(sid) != store.anonymous_csrf("B" * 43)
    # Secure outside development unless set, and never when switched off
    dev = s.model_copy(update={"environment": "development"})
    assert "Secure" not in SessionStore(dev, "k" * 40).cookie_header(sid, persistent=False)
    prod_off = s.model_copy(update={"environment": "production",
                                    "web": s.web.model_copy(update={"secure_cookies": False})})
    assert "Secure" not in SessionStore(prod_off, "k" * 40).cookie_header(sid, persistent=False)
    header = SessionStore(s.model_copy(update={"environment": "production"}), "k" * 40).cookie_header(
        sid, persistent=True)
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header
    assert f"Max-Age={s.web.session_absolute_s}" in header


async def _echo(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"read {len(body)}")


def _limited_app() -> Any:
    import re

    # as create_app stacks them: inside Starlette's error middleware, outside everything that reads a body
    return Starlette(routes=[Route("/form", _echo, methods=["POST"]), Route("/upload", _echo, methods=["POST"])],
                     middleware=[Middleware(SecurityHeadersMiddleware, hsts_always=False),
                                 Middleware(BodyLimitMiddleware, default_limit=1000,
                                            path_limits=[(re.compile("^/upload$"), 5000)])])


def _call(app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int, bytes]:
    """Run one request straight through the ASGI app: (status, body messages read, response body)."""
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        i = reads - 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5),
             "http_version": "1.1", "root_path": "", "asgi": {"version": "3.0"}}
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), reads, body


def test_a_large_content_length_gets_413_unread() -> None:
    app = _limited_app()
    status, reads, body = _call(app, "/form", [(b"content-length", str(300 * 1024 * 1024).encode())], [b"x"])
    assert (status, reads) == (413, 0) and b"too large" in body
    status, reads, _ = _call(app, "/upload", [(b"content-length", b"4000")], [b"x" * 4000])
    assert status == 200 and reads >= 1  # the upload route has its own, larger limit
    assert _call(app, "/form", [(b"content-length", b"-5")], [b""])[0] == 400
    assert _call(app, "/form", [(b"content-length", b"12")], [b"x" * 12])[0] == 200


def test_a_chunked_body_over_the_limit_gets_413() -> None:
    app = _limited_app()
    status, reads, _ = _call(app, "/form", [], [b"x" * 400] * 10)
    assert status == 413 and reads == 3  # cut off at the chunk that passed the limit, not read to the end
    assert _call(app, "/form", [], [b"x" * 400, b"x" * 400])[0] == 200
    with TestClient(_limited_app()) as client:  # a real chunked request (no Content-Length)
        r = client.post("/form", content=iter([b"y" * 600, b"y" * 600]))
        assert r.status_code == 413
        assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in r.headers  # plain HTTP, Secure cookies off
        assert client.post("/form", content=iter([b"y" * 600])).text == "read 600"


def test_hsts_over_tls_or_with_secure_cookies() -> None:
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    with TestClient(SecurityHeadersMiddleware(app, hsts_always=False), base_url="https://testserver") as client:
        assert "max-age=" in client.get("/").headers["strict-transport-security"]
    with TestClient(SecurityHeadersMiddleware(app, hsts_always=True)) as client:
        assert "strict-transport-security" in client.get("/").headers
