"""Connections to the radstream database."""

from __future__ import annotations

from typing import Any

import psycopg

from radstream.settings import Settings


def connect(
    settings: Settings, *, autocommit: bool = False, connect_timeout: int = 5, **kwargs: Any
) -> psycopg.Connection[Any]:
    """A new connection to the configured database (password from settings, never logged)."""
    return psycopg.connect(
        settings.postgres.conninfo(), autocommit=autocommit, connect_timeout=connect_timeout,
        application_name=kwargs.pop("application_name", "radstream"), **kwargs,
    )
