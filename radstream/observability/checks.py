"""Readiness checks for the services radstream processes depend on (each returns a callable)."""

from __future__ import annotations

from collections.abc import Callable

from radstream.settings import Settings


def kafka_ready(settings: Settings, timeout: float = 1.5) -> Callable[[], bool | str]:
    """Ready when the brokers answer a metadata request."""

    def check() -> bool | str:
        from confluent_kafka.admin import AdminClient

        from radstream.kafka.config import base_config

        md = AdminClient(base_config(settings, "radstream-readyz")).list_topics(timeout=timeout)
        return True if md.brokers else "no brokers in metadata"

    return check


def postgres_ready(settings: Settings, timeout: int = 2) -> Callable[[], bool | str]:
    """Ready when PostgreSQL accepts a connection and answers ``SELECT 1``."""

    def check() -> bool | str:
        import psycopg

        with psycopg.connect(settings.postgres.conninfo(), connect_timeout=timeout) as conn:
            row = conn.execute("SELECT 1").fetchone()
        return True if row and row[0] == 1 else "unexpected answer"

    return check


def http_ready(url: str, timeout: float = 1.5) -> Callable[[], bool | str]:
    """Ready when ``url`` answers 200 (e.g. Triton's ``/v2/health/ready``)."""

    def check() -> bool | str:
        import httpx

        r = httpx.get(url, timeout=timeout)
        return True if r.status_code == 200 else f"HTTP {r.status_code}"

    return check


def triton_ready(settings: Settings) -> Callable[[], bool | str]:
    t = settings.triton
    return http_ready(f"http://{t.host}:{t.http_port}/v2/health/ready")
