"""Server-side sessions of the review app (table ``web_sessions``, migration 0012).

The cookie ``radstream_session`` holds a random session id and its HMAC under the session secret
(``web.session_secret``, :func:`radstream.secrets.session_secret`); the database holds the session:
user, CSRF token, and the per-result "opened at" times of the review pages. Only the SHA-256 of the
id is stored. A session ends when its row goes (sign-out, disabling the user, a password change:
:func:`revoke_user`), when it is older than ``web.session_absolute_s`` (never extended, not even by
opening results) or idle for longer than ``web.session_idle_s``, and when the session secret
changes (the cookie's signature no longer verifies).

Before sign-in a visitor has an anonymous session: a signed id in the cookie and no row; its CSRF
token (for the sign-in form) is derived from the id with the secret, so anonymous visits write
nothing to the database.

:class:`SessionMiddleware` puts the session into ``scope["session"]`` as a dict (so handlers use
``request.session`` as with Starlette's cookie sessions) and writes back what changed. It also
refuses, before any body is read, an unsafe request that is cross-site (``Sec-Fetch-Site``) or,
outside sign-in and sign-out, not signed in.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from anyio import to_thread
from psycopg.types.json import Jsonb
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstream.db.connect import connect
from radstream.settings import Settings

COOKIE = "radstream_session"
SCOPE_KEY = "radstream.session"
# paths served without a session (no database round trip)
SESSIONLESS_PREFIXES = ("/static/",)
SESSIONLESS_PATHS = frozenset({"/healthz", "/favicon.ico"})
# unsafe requests that may come from a visitor who is not signed in
ANONYMOUS_POSTS = frozenset({"/login", "/logout"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$")
_RESERVED = ("user", "csrf")  # kept in their own columns, not in data
T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def id_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


class _Pool:
    """A few idle autocommit connections for the per-request session reads, so they cost no connect."""

    def __init__(self, settings: Settings, size: int = 4) -> None:
        self._settings = settings
        self._size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def _get(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return connect(self._settings, autocommit=True, application_name="radstream-web-sessions")

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken:
            return
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn(conn)`` on a pooled connection; once more on a new one when a kept connection went stale."""
        for attempt in (1, 2):
            conn = self._get()
            try:
                out = fn(conn)
            except psycopg.OperationalError:
                conn.close()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            self._put(conn)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


@dataclass(frozen=True, slots=True)
class Loaded:
    username: str
    csrf: str
    data: dict[str, Any]


@dataclass
class SessionState:
    """What the middleware knows of this request's session (``scope[SCOPE_KEY]``)."""

    sid: str  # from a cookie whose signature verified, or made for this request
    new: bool  # made for this request: the cookie is set only if the session is used
    username: str | None  # the signed-in user the row belongs to
    anonymous_csrf: str
    snapshot: str = ""
    started: str | None = None  # the id of a session a sign-in made in this request
    ended: bool = False  # signed out in this request


class SessionStore:
    """Signing, reading and writing sessions; the SQL takes the caller's connection."""

    def __init__(self, settings: Settings, key: str) -> None:
        self.settings = settings
        self._key = key.encode("utf-8")
        self.absolute_s = settings.web.session_absolute_s
        self.idle_s = settings.web.session_idle_s
        self.secure = settings.web.cookies_secure(settings.environment)
        self.pool = _Pool(settings)

    # --- the cookie ---------------------------------------------------------------------------------
    def _mac(self, purpose: bytes, sid: str) -> str:
        return _b64(hmac.new(self._key, purpose + sid.encode("ascii"), hashlib.sha256).digest())

    def sign(self, sid: str) -> str:
        return f"{sid}.{self._mac(b'radstream-session-id:', sid)}"

    def unsign(self, value: str | None) -> str | None:
        """The session id of a cookie value, or None unless it was signed with this secret."""
        if not value or not _COOKIE_VALUE.match(value):
            return None
        sid, sig = value.split(".", 1)
        return sid if hmac.compare_digest(sig, self._mac(b"radstream-session-id:", sid)) else None

    def anonymous_csrf(self, sid: str) -> str:
        return self._mac(b"radstream-anonymous-csrf:", sid)

    def cookie_header(self, sid: str | None, *, persistent: bool) -> str:
        attrs = ["Path=/", "HttpOnly", "SameSite=Lax"]
        if self.secure:
            attrs.append("Secure")
        if sid is None:
            return "; ".join([f"{COOKIE}=", "Max-Age=0", *attrs])
        if persistent:
            attrs.insert(0, f"Max-Age={self.absolute_s}")
        return "; ".join([f"{COOKIE}={self.sign(sid)}", *attrs])

    # --- rows ---------------------------------------------------------------------------------------
    def create(self, conn: psycopg.Connection[Any], username: str, client_addr: str | None = None,
               user_agent: str | None = None) -> tuple[str, str]:
        """A new session for ``username``: (session id, CSRF token). Expired rows are purged on the way."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.purge(conn)
        conn.execute(
            """INSERT INTO web_sessions (id_hash, username, csrf_token, expires_at, client_addr, user_agent)
               VALUES (%s, %s, %s, now() + make_interval(secs => %s), %s, %s)""",
            (id_hash(sid), username, csrf, float(self.absolute_s), client_addr, (user_agent or "")[:300] or None))
        return sid, csrf

    def load(self, conn: psycopg.Connection[Any], sid: str) -> Loaded | None:
        """The live session of ``sid`` (its idle clock restarted), or None (a dead one is deleted)."""
        row = conn.execute(
            """UPDATE web_sessions s SET last_seen_at = now()
               FROM users u
               WHERE s.id_hash = %s AND u.username = s.username AND NOT u.disabled
                 AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(secs => %s)
               RETURNING s.username, s.csrf_token, s.data""",
            (id_hash(sid), float(self.idle_s))).fetchone()
        if row is None:
            conn.execute("DELETE FROM web_sessions WHERE id_hash = %s", (id_hash(sid),))
            return None
        data = row[2] if isinstance(row[2], dict) else {}
        return Loaded(str(row[0]), str(row[1]), data)

    def save(self, conn: psycopg.Connection[Any], sid: str, csrf: str, data: dict[str, Any]) -> None:
        """Write the session's data; ``expires_at`` stays as sign-in set it."""
        conn.execute("UPDATE web_sessions SET csrf_token = %s, data = %s WHERE id_hash = %s",
                     (csrf, Jsonb(data), id_hash(sid)))

    def delete(self, conn: psycopg.Connection[Any], sid: str) -> None:
        conn.execute("DELETE FROM web_sessions WHERE id_hash = %s", (id_hash(sid),))

    def purge(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(
            "DELETE FROM web_sessions WHERE expires_at <= now() OR last_seen_at <= now() - make_interval(secs => %s)",
            (float(self.idle_s),))
        return cur.rowcount

    def close(self) -> None:
        self.pool.close()


def revoke_user(conn: psycopg.Connection[Any], username: str) -> int:
    """End every session of ``username`` (disabled, password changed); the number ended."""
    try:
        with conn.transaction():
            cur = conn.execute("DELETE FROM web_sessions WHERE username = %s", (username,))
    except psycopg.errors.UndefinedTable:  # a database not yet migrated to 0012 has no sessions to end
        return 0
    return cur.rowcount


def state_of(scope: Scope) -> SessionState | None:
    state = scope.get(SCOPE_KEY)
    return state if isinstance(state, SessionState) else None


def start(request: HTTPConnection, store: SessionStore, conn: psycopg.Connection[Any], username: str) -> None:
    """Sign-in: a new session (new id, new CSRF token: no fixation) replaces whatever the request had."""
    client = request.client.host if request.client else None
    sid, csrf = store.create(conn, username, client, request.headers.get("user-agent"))
    state = state_of(request.scope)
    if state is not None:
        if state.username is not None and state.sid != sid:
            store.delete(conn, state.sid)
        state.started = sid
    request.session.clear()
    request.session.update({"user": username, "csrf": csrf})


def end(request: HTTPConnection, store: SessionStore, conn: psycopg.Connection[Any]) -> None:
    """Sign-out: the row goes; the browser gets a fresh anonymous id."""
    state = state_of(request.scope)
    if state is not None:
        store.delete(conn, state.sid)
        state.ended = True
    request.session.clear()


def _snapshot(session: dict[str, Any]) -> str:
    return json.dumps(session, sort_keys=True, default=str)


class SessionMiddleware:
    """Load the session before the app runs; write back what changed when the response starts."""

    def __init__(self, app: ASGIApp, store: SessionStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path in SESSIONLESS_PATHS or path.startswith(SESSIONLESS_PREFIXES):
            scope["session"] = {}
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        store = self.store
        sid = store.unsign(conn.cookies.get(COOKIE))
        loaded: Loaded | None = None
        if sid is not None:
            known = sid
            loaded = await to_thread.run_sync(lambda: store.pool.run(lambda c: store.load(c, known)))
        new = sid is None
        sid = sid or secrets.token_urlsafe(32)
        state = SessionState(sid=sid, new=new, username=loaded.username if loaded else None,
                             anonymous_csrf=store.anonymous_csrf(sid))
        if loaded is not None:
            session: dict[str, Any] = {**loaded.data, "user": loaded.username, "csrf": loaded.csrf}
        else:
            session = {} if new else {"csrf": state.anonymous_csrf}
        state.snapshot = _snapshot(session)
        scope["session"] = session
        scope[SCOPE_KEY] = state

        early = self._refuse_before_body(conn, state)
        if early is not None:
            await early(scope, receive, send)
            return

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = await self._finish(scope, state)
                if header is not None:
                    MutableHeaders(scope=message).append("set-cookie", header)
            await send(message)

        await self.app(scope, receive, send_with_session)

    def _refuse_before_body(self, conn: HTTPConnection, state: SessionState) -> Response | None:
        """Unsafe requests: cross-site ones, and ones not signed in (except sign-in/out), end here, unread."""
        if conn.scope.get("method", "GET") in SAFE_METHODS:
            return None
        if conn.headers.get("sec-fetch-site", "").lower() == "cross-site":
            return PlainTextResponse("cross-site request refused", status_code=403,
                                     headers={"Cache-Control": "no-store"})
        if state.username is None and conn.url.path not in ANONYMOUS_POSTS:
            if conn.url.path.startswith("/api/"):
                return JSONResponse({"error": "sign in first"}, status_code=401)
            return RedirectResponse("/login", 303)
        return None

    async def _finish(self, scope: Scope, state: SessionState) -> str | None:
        """Persist the session's changes; the Set-Cookie header to send, if any."""
        store = self.store
        session: dict[str, Any] = scope.get("session") or {}
        if state.started is not None:
            return store.cookie_header(state.started, persistent=True)
        if state.ended:
            return store.cookie_header(secrets.token_urlsafe(32), persistent=False)
        if state.username is not None:
            if session.get("user") != state.username:  # cleared (user gone or disabled): the row goes
                sid = state.sid
                await to_thread.run_sync(lambda: store.pool.run(lambda c: store.delete(c, sid)))
                return None  # the cookie stays, as an anonymous session with the same id
            if _snapshot(session) != state.snapshot:
                sid, csrf = state.sid, str(session.get("csrf") or "")
                data = {k: v for k, v in session.items() if k not in _RESERVED}
                data = json.loads(json.dumps(data, default=str))
                await to_thread.run_sync(lambda: store.pool.run(lambda c: store.save(c, sid, csrf, data)))
            return None
        if state.new and "csrf" in session:  # an anonymous visitor got a form: keep the id it belongs to
            return store.cookie_header(state.sid, persistent=False)
        return None
