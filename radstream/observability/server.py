"""One small HTTP server per process: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Info, generate_latest

from radstream import __version__
from radstream.observability.metrics import ConsumerMetrics
from radstream.settings import Settings

log = logging.getLogger(__name__)

Check = Callable[[], "bool | str | None"]
"""A readiness check: returns True/None when ready; False or a message (str) when not; may raise."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


class Observability:
    """Metrics registry, liveness beat and readiness checks of one process, served over HTTP."""

    def __init__(
        self,
        component: str,
        port: int,
        address: str = "127.0.0.1",
        labels: dict[str, str] | None = None,
        registry: CollectorRegistry | None = None,
        readiness_timeout_s: float = 2.0,
        liveness_stale_s: float = 120.0,
    ) -> None:
        self.component = component
        self.port = port
        self.address = address
        self.labels = dict(labels or {})
        self.registry = registry or CollectorRegistry()
        self.readiness_timeout_s = readiness_timeout_s
        self.liveness_stale_s = liveness_stale_s
        self._checks: dict[str, Check] = {}
        self._last_beat: float | None = None
        self._started_at = time.monotonic()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{component}-readyz")
        self._consumer_metrics: ConsumerMetrics | None = None
        info = Info("radstream_build", "radstream version and component of this process", registry=self.registry)
        info.info({"version": __version__, "component": component, **self.labels})
        self._up = Gauge("radstream_process_ready", "1 while every readiness check passes", ["component"],
                         registry=self.registry)

    @classmethod
    def for_component(
        cls, settings: Settings, component: str, labels: dict[str, str] | None = None, port: int | None = None,
        registry: CollectorRegistry | None = None, address: str | None = None,
    ) -> Observability:
        """Built from ``settings.observability`` (port per component, 0 = off; ``port`` overrides it).

        ``registry``: serve metrics a process already defines (e.g. the ingest SCP's) on the same endpoint.
        """
        o = settings.observability
        return cls(
            component,
            o.port_for(component) if port is None else port,
            address=o.address if address is None else address,
            labels=labels,
            registry=registry,
            readiness_timeout_s=o.readiness_timeout_s,
            liveness_stale_s=o.liveness_stale_s,
        )

    # -- checks and beat ---------------------------------------------------------------------------

    def add_readiness_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def beat(self) -> None:
        """Mark the main loop alive (call once per loop turn; cheap)."""
        self._last_beat = time.monotonic()

    def consumer_metrics(self) -> ConsumerMetrics:
        """The standard consumer-loop metrics on this registry (created once)."""
        if self._consumer_metrics is None:
            self._consumer_metrics = ConsumerMetrics(self.registry, self.component)
        return self._consumer_metrics

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = None if self._last_beat is None else time.monotonic() - self._last_beat
        ok = age is None or age <= self.liveness_stale_s
        return ok, {
            "component": self.component,
            "alive": ok,
            "beat_age_s": None if age is None else round(age, 3),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
        }

    def readiness(self) -> tuple[bool, list[CheckResult]]:
        results = [self._run_check(n, c) for n, c in list(self._checks.items())]
        ok = all(r.ok for r in results)
        self._up.labels(self.component).set(1 if ok else 0)
        return ok, results

    def _run_check(self, name: str, check: Check) -> CheckResult:
        t0 = time.monotonic()
        fut = self._pool.submit(check)
        try:
            value = fut.result(timeout=self.readiness_timeout_s)
        except FutureTimeout:
            return CheckResult(name, False, f"timed out after {self.readiness_timeout_s}s", time.monotonic() - t0)
        except Exception as exc:  # a failing check is a not-ready answer, never a crash
            return CheckResult(name, False, f"{type(exc).__name__}: {exc}"[:300], time.monotonic() - t0)
        ok = value is None or value is True
        detail = "ok" if ok else (value if isinstance(value, str) else "not ready")
        return CheckResult(name, ok, detail, time.monotonic() - t0)

    # -- HTTP --------------------------------------------------------------------------------------

    def start(self) -> int:
        """Serve in a daemon thread; returns the bound port (0 = off). A busy port is logged, not fatal."""
        if self.port == 0 or self._server is not None:
            return self.bound_port
        handler = _handler_for(self)
        try:
            self._server = ThreadingHTTPServer((self.address, self.port), handler)
        except OSError as exc:
            log.warning("%s: metrics/health endpoint not started on %s:%s: %s",
                        self.component, self.address, self.port, exc)
            return 0
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.component}-observability",
                                        daemon=True)
        self._thread.start()
        log.info("%s: /metrics /healthz /readyz on http://%s:%s", self.component, self.address, self.bound_port)
        return self.bound_port

    @property
    def bound_port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else 0

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Observability:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _handler_for(obs: Observability) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "radstream-observability"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(obs.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok, body = obs.liveness()
                self._json(200 if ok else 503, body)
            elif path == "/readyz":
                ok, results = obs.readiness()
                self._json(200 if ok else 503, {
                    "component": obs.component,
                    "ready": ok,
                    "checks": {r.name: {"ok": r.ok, "detail": r.detail, "seconds": round(r.seconds, 4)}
                               for r in results},
                })
            else:
                self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, data: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
