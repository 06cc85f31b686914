"""Batch writes through COPY into per-connection temporary staging tables.

Rows are COPYed into ``TEMP`` tables (``ON COMMIT DELETE ROWS``, created once per
connection), then merged into the real tables with ``INSERT ... SELECT ... ON CONFLICT``,
so a batch costs a handful of statements whatever its size, and replays are idempotent.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

_DONE: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = weakref.WeakKeyDictionary()
_TYPES: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[tuple[str, tuple[str, ...]], list[str]]] = (
    weakref.WeakKeyDictionary()
)


def ensure_stages(conn: psycopg.Connection[Any], ddl: Sequence[str]) -> None:
    """Create this connection's staging tables (once per connection)."""
    done = _DONE.setdefault(conn, set())
    todo = [d for d in ddl if d not in done]
    if not todo:
        return
    with conn.transaction():
        for statement in todo:
            conn.execute(statement.encode("utf-8"))
    done.update(todo)


def column_types(conn: psycopg.Connection[Any], table: str, columns: Sequence[str]) -> list[str]:
    """The type names of ``table``'s ``columns`` (for binary COPY), cached per connection."""
    cache = _TYPES.setdefault(conn, {})
    key = (table, tuple(columns))
    if key not in cache:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (table,),
        ).fetchall()
        types = {str(n): str(t) for n, t in rows}
        cache[key] = [types[c] for c in columns]
    return cache[key]


def copy_rows(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY ``rows`` into ``table(columns)`` in binary format; returns how many were written."""
    types = column_types(cur.connection, table, columns)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    n = 0
    with cur.copy(stmt) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def prepare_copies(conn: psycopg.Connection[Any], ddl: Sequence[str],
                   copies: Iterable[tuple[str, Sequence[str]]]) -> None:
    """Create the staging tables and look up the column types of every ``(table, columns)`` a
    writer COPYs into, so the first batch on a new connection does not wait for that."""
    ensure_stages(conn, ddl)
    for table, columns in copies:
        column_types(conn, table, columns)


def forget(conn: psycopg.Connection[Any]) -> None:
    """Drop the record of ``conn``'s staging tables (the connection is being closed)."""
    _DONE.pop(conn, None)
    _TYPES.pop(conn, None)
