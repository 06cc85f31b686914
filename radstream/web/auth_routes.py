"""Sign-in (throttled, :mod:`radstream.web.throttle`), sign-out and the home redirect.

A wrong password and an unknown user name get the same answer (status, message, and the work of one
argon2 verification); a locked name or address gets 429 whether or not the account exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from radstream.web import sessions, throttle
from radstream.web.audit import audit
from radstream.web.context import Web
from radstream.web.ldap_auth import ldap_bind
from radstream.web.security import check_csrf, safe_next
from radstream.web.users import User, get_user, mark_login, verify_local

HOME = {"reader": "/worklist", "qc": "/qc", "admin": "/worklist"}
FAILED = "Unknown user name or wrong password."


@dataclass(frozen=True, slots=True)
class Attempt:
    user: User | None
    retry_after_s: float = 0.0


def routes(web: Web) -> list[Route]:
    def login_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.user(request, conn)
        if user is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")) if request.query_params.get("next")
                                    else HOME[user.role], 303)
        return web.render(request, "login.html", None, next=safe_next(request.query_params.get("next")), error=None)

    policy = throttle.ThrottlePolicy.from_settings(web.settings.web)

    def _authenticate(request: Request, username: str, password: str, client: str | None) -> Attempt:
        named = username[:64] or None
        with web.db() as conn:
            wait = throttle.locked_for(conn, username, client)
            if wait > 0:  # refused unchecked: a lock holds whatever the password
                audit(conn, named, "login_throttled", client_addr=client,
                      detail={"retry_after_s": math.ceil(wait)})
                return Attempt(None, wait)
            user = verify_local(conn, username, password)
            if user is None and web.settings.web.ldap.enabled:
                local = get_user(conn, username)
                if local is not None and not local.disabled and ldap_bind(web.settings.web.ldap, username, password):
                    user = local
            if user is None:
                locks = throttle.record_failure(conn, policy, username, client)
                audit(conn, named, "login_failed", client_addr=client)
                for lock in locks:
                    audit(conn, named, "login_locked", client_addr=client,
                          detail={"kind": lock.kind, "failures": lock.failures, "locked_s": lock.seconds,
                                  **({"address": lock.subject} if lock.kind == "addr" else {})})
                return Attempt(None)
            throttle.record_success(conn, user.username)
            mark_login(conn, user.username)
            audit(conn, user.username, "login", client_addr=client)
            sessions.start(request, web.sessions, conn, user.username)  # a new session id: no fixation
            return Attempt(user)

    async def login(request: Request) -> Response:
        form = await check_csrf(request)
        username = str(form.get("username") or "").replace("\x00", "").strip()[:200]
        password = str(form.get("password") or "")[:1024]
        target = safe_next(str(form.get("next") or ""))
        client = request.client.host if request.client else None
        attempt = (await run_in_threadpool(_authenticate, request, username, password, client)
                   if username and password else Attempt(None))
        if attempt.user is None:
            if attempt.retry_after_s > 0:
                minutes = max(1, math.ceil(attempt.retry_after_s / 60))
                refused = web.render(request, "login.html", None, status_code=429, next=target,
                                     error=f"Too many failed sign-ins. Try again in {minutes} minute"
                                           f"{'s' if minutes > 1 else ''}.")
                refused.headers["Retry-After"] = str(math.ceil(attempt.retry_after_s))
                return refused
            return web.render(request, "login.html", None, status_code=401, next=target, error=FAILED)
        return RedirectResponse(target if target != "/" else HOME[attempt.user.role], 303)

    async def logout(request: Request) -> Response:
        await check_csrf(request)
        name = request.session.get("user")
        client = request.client.host if request.client else None

        def _end() -> None:
            with web.db() as conn:
                sessions.end(request, web.sessions, conn)
                if isinstance(name, str):
                    audit(conn, name, "logout", client_addr=client)

        await run_in_threadpool(_end)
        return RedirectResponse("/login", 303)

    def home(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn)
        return RedirectResponse(HOME[user.role], 303)

    def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    def favicon(request: Request) -> Response:
        return Response(status_code=204)

    return [
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
