"""Which keys of a batch are already stored: one indexed query for all tables of the batch.

A batch whose keys are new is COPYed straight into its tables; only rows whose key exists
go through a staging table and an ``INSERT ... ON CONFLICT`` merge. The answer can go stale
if another writer stores the same key before our COPY (a rebalance hands a partition over
mid-batch): that COPY then fails with a unique violation and the caller merges the whole
batch instead (see :data:`CONFLICT_ERRORS`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg import errors, sql

# a COPY of rows believed new met a key stored meanwhile (or two writers crossed): merge instead
CONFLICT_ERRORS: tuple[type[psycopg.Error], ...] = (errors.UniqueViolation, errors.DeadlockDetected)


def existing_keys(cur: psycopg.Cursor[Any], wanted: Mapping[str, tuple[str, Iterable[str]]]) -> dict[str, set[str]]:
    """``{table: (key column, keys)}`` -> ``{table: the keys already in table}`` in one round trip."""
    parts: list[sql.Composable] = []
    params: list[list[str]] = []
    tables: list[str] = []
    for table, (column, keys) in wanted.items():
        key_list = list(keys)
        if not key_list:
            continue
        parts.append(sql.SQL("SELECT {}::int, {} FROM {} WHERE {} = ANY(%b)").format(
            sql.Literal(len(tables)), sql.Identifier(column), sql.Identifier(table), sql.Identifier(column)))
        params.append(key_list)
        tables.append(table)
    found: dict[str, set[str]] = {t: set() for t in wanted}
    if not parts:
        return found
    cur.execute(sql.SQL(" UNION ALL ").join(parts), params)
    for i, key in cur.fetchall():
        found[tables[i]].add(key)
    return found
