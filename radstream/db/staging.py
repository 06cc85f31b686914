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


def copy_rows(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY ``rows`` into ``table(columns)``; returns how many were written."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    n = 0
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def forget(conn: psycopg.Connection[Any]) -> None:
    """Drop the record of ``conn``'s staging tables (the connection is being closed)."""
    _DONE.pop(conn, None)
