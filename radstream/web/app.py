"""The Starlette application: routes, server-side sessions, bounded bodies, security headers, error pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from radstream.kafka.producer import EventProducer
from radstream.observability import Observability
from radstream.observability.http import HttpMetricsMiddleware
from radstream.settings import Settings
from radstream.web import admin_routes, auth_routes, qc_routes, review_routes, study_routes
from radstream.web.context import Web, static_dir
from radstream.web.limits import CSP, BodyLimitMiddleware, SecurityHeadersMiddleware
from radstream.web.security import NotSignedIn, login_url, session_key
from radstream.web.sessions import SessionMiddleware, SessionStore

__all__ = ["CSP", "create_app"]


def create_app(settings: Settings, *, producer: EventProducer | None = None,
               obs: Observability | None = None) -> Starlette:
    """``obs``: count requests per route on that process's /metrics (served on its own port).

    Raises :class:`radstream.secrets.PlaceholderSecret` in production when ``web.session_secret`` is
    unset (the shipped placeholder) or empty: the app does not start with a public key.
    """
    key, _ = session_key(settings)
    sessions = SessionStore(settings, key)
    web = Web(settings, producer, sessions)

    async def not_signed_in(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return RedirectResponse(login_url(request), 303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return web.render(request, "error.html", None, status_code=exc.status_code, status=exc.status_code,
                          detail=exc.detail)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            web.close()

    routes: list[Any] = [
        *auth_routes.routes(web), *review_routes.routes(web), *qc_routes.routes(web), *admin_routes.routes(web),
        *study_routes.routes(web),
        Mount("/static", app=StaticFiles(directory=static_dir()), name="static"),
    ]
    # outermost first: headers on every answer (413s too), bodies bounded before anything reads them,
    # then the session (and the refusals that need no body: cross-site, not signed in)
    middleware = [
        Middleware(SecurityHeadersMiddleware, hsts_always=sessions.secure),
        Middleware(BodyLimitMiddleware.for_settings, settings=settings),
        Middleware(SessionMiddleware, store=sessions),
        *([Middleware(HttpMetricsMiddleware, obs=obs)] if obs is not None else []),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={NotSignedIn: not_signed_in, HTTPException: http_error})
    app.state.web = web
    return app
