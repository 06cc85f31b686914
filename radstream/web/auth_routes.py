"""Sign-in, sign-out and the home redirect."""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from radstream.web.audit import audit
from radstream.web.context import Web
from radstream.web.ldap_auth import ldap_bind
from radstream.web.security import check_csrf, safe_next
from radstream.web.users import User, get_user, mark_login, verify_local

HOME = {"reader": "/worklist", "qc": "/qc", "admin": "/worklist"}


def routes(web: Web) -> list[Route]:
    def login_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.user(request, conn)
        if user is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")) if request.query_params.get("next")
                                    else HOME[user.role], 303)
        return web.render(request, "login.html", None, next=safe_next(request.query_params.get("next")), error=None)

    def _authenticate(username: str, password: str, client: str | None) -> User | None:
        with web.db() as conn:
            user = verify_local(conn, username, password)
            if user is None and web.settings.web.ldap.enabled:
                local = get_user(conn, username)
                if local is not None and not local.disabled and ldap_bind(web.settings.web.ldap, username, password):
                    user = local
            if user is None:
                audit(conn, username[:64] or None, "login_failed", client_addr=client)
                return None
            mark_login(conn, user.username)
            audit(conn, user.username, "login", client_addr=client)
            return user

    async def login(request: Request) -> Response:
        form = await check_csrf(request)
        username = str(form.get("username") or "").replace("\x00", "").strip()[:200]
        password = str(form.get("password") or "")[:1024]
        target = safe_next(str(form.get("next") or ""))
        client = request.client.host if request.client else None
        user = await run_in_threadpool(_authenticate, username, password, client) if username and password else None
        if user is None:
            return web.render(request, "login.html", None, status_code=401, next=target,
                              error="Unknown user name or wrong password.")
        request.session.clear()  # a new session on sign-in (no fixation)
        request.session["user"] = user.username
        request.session["csrf"] = secrets.token_urlsafe(32)
        return RedirectResponse(target if target != "/" else HOME[user.role], 303)

    async def logout(request: Request) -> Response:
        await check_csrf(request)
        name = request.session.get("user")

        def _log() -> None:
            if isinstance(name, str):
                with web.db() as conn:
                    audit(conn, name, "logout", client_addr=request.client.host if request.client else None)

        await run_in_threadpool(_log)
        request.session.clear()
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
