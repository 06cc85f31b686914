"""Request metrics of an ASGI app (the review web app), on the process's observability registry.

``radstream_http_requests_total`` (component, method, route, status) and
``radstream_http_request_seconds`` (component, route): the route is the matched route's path
template (``/result/{result_id}``), never the concrete path, so no identifier reaches a label.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

from radstream.observability.metrics import LATENCY_BUCKETS
from radstream.observability.server import Observability

Scope = dict[str, Any]
Message = dict[str, Any]


class HttpMetricsMiddleware:
    """Pure ASGI middleware; HTTP requests only, websockets and lifespan pass through.

    It does not beat: an idle web app is alive (its liveness is the app's own ``/healthz``).
    """

    def __init__(self, app: Any, obs: Observability) -> None:
        self.app = app
        self.obs = obs
        r = obs.registry
        self.requests = Counter("radstream_http_requests_total", "HTTP requests answered",
                                ["component", "method", "route", "status"], registry=r)
        self.seconds = Histogram("radstream_http_request_seconds", "time to answer one HTTP request",
                                 ["component", "route"], buckets=LATENCY_BUCKETS, registry=r)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = str(getattr(route, "path", None) or "unmatched")
            comp = self.obs.component
            self.requests.labels(comp, scope.get("method", "?"), name, str(status[0])).inc()
            self.seconds.labels(comp, name).observe(time.perf_counter() - t0)
