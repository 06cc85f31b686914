"""Connections to the radstream database."""

from __future__ import annotations

from typing import Any

import psycopg
from pydantic import SecretStr

from radstream.settings import Settings


def connect(
    settings: Settings, *, autocommit: bool = False, connect_timeout: int = 5, **kwargs: Any
) -> psycopg.Connection[Any]:
    """A new connection to the configured database (the password comes from settings, never logged)."""
    pg = settings.postgres
    # tolerate a plain str password (model_copy(update=...) skips validation)
    password = pg.password.get_secret_value() if isinstance(pg.password, SecretStr) else str(pg.password)
    return psycopg.connect(
        host=pg.host, port=pg.port, user=pg.user, password=password, dbname=pg.database,
        autocommit=autocommit, connect_timeout=connect_timeout,
        application_name=kwargs.pop("application_name", "radstream"), **kwargs,
    )
