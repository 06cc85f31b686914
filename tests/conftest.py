"""Session fixtures: the real Kafka broker and PostgreSQL, started for the test run.

Set ``RADSTREAM_TEST_BOOTSTRAP`` (host:port) or ``RADSTREAM_TEST_PG`` (a libpq conninfo of a
superuser) to use servers you already run instead. Each test gets its own topic prefix
(so its own topics) and, where it asks for PostgreSQL, its own database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from radstream.settings import Settings

# The suite runs as a development machine: a secret it does not set (blinding salt, web session key)
# becomes a random one under the test's own home instead of stopping the process, as it would in
# production (tests/unit/test_secrets.py and tests/integration/test_web_sessions.py prove that refusal
# with the environment set to production explicitly). Child processes inherit it.
os.environ["RADSTREAM_ENVIRONMENT"] = "development"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RADSTREAM_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    from radstream.devenv.kafka import KafkaServer
    from radstream.devenv.process import free_port

    port = free_port()
    server = KafkaServer(tmp_path_factory.mktemp("kafka"), port=port, controller_port=free_port())
    server.start()
    try:
        yield server.bootstrap
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_admin_conninfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RADSTREAM_TEST_PG")
    if given:
        yield given
        return
    from radstream.devenv.postgres import PostgresServer
    from radstream.devenv.process import free_port

    server = PostgresServer(tmp_path_factory.mktemp("pg"), port=free_port())
    server.start()
    try:
        yield server.conninfo("postgres")
    finally:
        server.stop()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    """Settings for a unit test: a private home folder, no servers."""
    return Settings(home=tmp_path / "home", site_secret="test-site-secret")  # type: ignore[arg-type]


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings on the session broker with this test's own topics (created)."""
    from radstream.kafka.topics import create_topics

    s = Settings(
        home=tmp_path / "home",
        site_secret="test-site-secret",  # type: ignore[arg-type]
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": _unique("t"), "default_partitions": 3},
    )
    create_topics(s)
    return s


@pytest.fixture
def pg_settings(pg_admin_conninfo: str, kafka_settings: Settings) -> Iterator[Settings]:
    """``kafka_settings`` plus a fresh PostgreSQL database of this test's own."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    db = _unique("test_")
    with psycopg.connect(pg_admin_conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    info = conninfo_to_dict(pg_admin_conninfo)
    s = kafka_settings.model_copy(
        update={
            "postgres": kafka_settings.postgres.model_copy(
                update={
                    "host": info.get("host", "127.0.0.1"),
                    "port": int(info.get("port", 5432)),
                    "user": info.get("user", "radstream"),
                    "password": SecretStr(info.get("password", "")),
                    "database": db,
                    "managed": False,
                }
            )
        }
    )
    yield s
    with psycopg.connect(pg_admin_conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
