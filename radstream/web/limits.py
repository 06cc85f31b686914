"""Request bodies bounded before they are read, and the security headers of every response.

:class:`BodyLimitMiddleware` answers 413 to a request whose ``Content-Length`` exceeds the limit of
its path without reading a byte of the body, and cuts off a body without a length (chunked) as soon
as it passes the limit (413 when no response has started). The SEG upload routes (a reader's
corrected SEG, the study lead's human segmentation) get ``web.max_upload_mb`` (plus room for the
form's other fields); every other request ``web.max_form_bytes``.

:class:`SecurityHeadersMiddleware` adds CSP, nosniff, frame and referrer policies, ``Cache-Control:
no-store`` (outside ``/static/``), and HSTS when the request came over TLS or cookies are Secure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstream.settings import Settings

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HSTS = "max-age=31536000; includeSubDomains"
UPLOAD_PATHS = (re.compile(r"^/results/[^/]+/feedback$"), re.compile(r"^/admin/study/segmentations$"))
_FORM_SLACK = 1024 * 1024  # the upload form's other fields and multipart framing


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without a Content-Length passes its limit."""


def _too_large(limit: int) -> PlainTextResponse:
    return PlainTextResponse(f"request body too large (at most {limit} bytes)", status_code=413,
                             headers={"Connection": "close", "Cache-Control": "no-store"})


def _contains_too_large(exc: BaseException) -> bool:
    if isinstance(exc, BodyTooLarge):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains_too_large(e) for e in exc.exceptions)
    return _contains_too_large(exc.__cause__) if exc.__cause__ is not None else False


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, default_limit: int,
                 path_limits: Iterable[tuple[re.Pattern[str], int]] = ()) -> None:
        self.app = app
        self.default_limit = default_limit
        self.path_limits = list(path_limits)

    @classmethod
    def for_settings(cls, app: ASGIApp, settings: Settings) -> BodyLimitMiddleware:
        upload = settings.web.max_upload_mb * 1024 * 1024 + _FORM_SLACK
        return cls(app, settings.web.max_form_bytes, [(p, upload) for p in UPLOAD_PATHS])

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.path_limits:
            if pattern.match(path):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        raw = Headers(scope=scope).get("content-length")
        if raw is not None:
            if not raw.strip().isdigit():
                await PlainTextResponse("bad Content-Length", status_code=400,
                                        headers={"Connection": "close"})(scope, receive, send)
                return
            if int(raw) > limit:
                await _too_large(limit)(scope, receive, send)  # the body is never read
                return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BaseException as exc:
            if not _contains_too_large(exc) or started:
                raise
            await _too_large(limit)(scope, receive, send)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts_always: bool) -> None:
        self.app = app
        self.hsts_always = hsts_always

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin")):
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
                if tls or self.hsts_always:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, with_headers)
