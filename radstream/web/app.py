"""The Starlette application: routes, signed sessions, security headers, error pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from radstream.kafka.producer import EventProducer
from radstream.observability import Observability
from radstream.observability.http import HttpMetricsMiddleware
from radstream.settings import Settings
from radstream.web import admin_routes, auth_routes, qc_routes, review_routes
from radstream.web.context import Web, static_dir
from radstream.web.security import NotSignedIn, login_url, session_key

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app(settings: Settings, *, producer: EventProducer | None = None,
               obs: Observability | None = None) -> Starlette:
    """``obs``: count requests per route on that process's /metrics (served on its own port)."""
    web = Web(settings, producer)

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
        Mount("/static", app=StaticFiles(directory=static_dir()), name="static"),
    ]
    middleware = [
        Middleware(SessionMiddleware, secret_key=session_key(settings)[0],
                   session_cookie="radstream_session", max_age=settings.web.session_max_age_s, same_site="lax",
                   https_only=settings.web.secure_cookies),
        Middleware(BaseHTTPMiddleware, dispatch=_headers),
        *([Middleware(HttpMetricsMiddleware, obs=obs)] if obs is not None else []),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={NotSignedIn: not_signed_in, HTTPException: http_error},
                    max_body_size=(settings.web.max_upload_mb + 1) * 1024 * 1024)
    app.state.web = web
    return app
