"""Versioned SQL migrations: ``migrations/NNNN_name.sql`` applied in order, each recorded once.

Runs under a session advisory lock, so concurrent ``radstream db migrate`` calls (several
processes starting at once) apply each migration exactly once; running it again is a no-op.
Each migration runs in its own transaction together with its ``schema_migrations`` row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg

from radstream.db.connect import connect
from radstream.settings import Settings

log = logging.getLogger(__name__)

# pg_advisory_lock key: "radstream" in ASCII, folded into a bigint
LOCK_KEY = 0x7261647374726561
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the shipped files."""


def available() -> list[Migration]:
    """The migrations shipped in ``radstream/db/migrations``, in version order."""
    out: list[Migration] = []
    folder = resources.files("radstream.db") / "migrations"
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return out


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version     integer PRIMARY KEY,
                   name        text NOT NULL,
                   checksum    text NOT NULL,
                   applied_at  timestamptz NOT NULL DEFAULT now()
               )"""
        )


def applied(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """version -> checksum of what this database has applied."""
    rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    return {int(v): str(c) for v, c in rows}


def migrate_connection(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply what is missing on ``conn`` (autocommit connection); return what was applied."""
    if not conn.autocommit:
        raise ValueError("migrate_connection needs an autocommit connection")
    done: list[Migration] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        _ensure_table(conn)
        have = applied(conn)
        for mig in available():
            if mig.version in have:
                if have[mig.version] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                conn.execute(mig.sql.encode("utf-8"))
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
            log.info("applied migration %04d_%s", mig.version, mig.name)
            done.append(mig)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done


def migrate(settings: Settings) -> list[Migration]:
    """Bring the configured database up to date; safe to run any number of times, concurrently."""
    with connect(settings, autocommit=True, application_name="radstream-migrate") as conn:
        done = migrate_connection(conn)
        sync_pipelines(conn, settings)
    return done


def sync_pipelines(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """Write each pipeline's rules into the ``pipelines`` table: its QC gate from its file
    (``qc_required:``), its progression threshold from the settings."""
    from radstream.pipelines.spec import load_pipeline_file

    qc = {p.stem: load_pipeline_file(p).qc_required for p in sorted(settings.pipelines_folder.glob("*.yaml"))}
    names = set(qc) | set(settings.pipeline_names()) | set(settings.sinks.progression_threshold_pct)
    with conn.transaction():
        for name in sorted(names):
            conn.execute(
                """INSERT INTO pipelines (name, progression_threshold_pct, qc_required) VALUES (%s, %s, %s)
                   ON CONFLICT (name) DO UPDATE SET
                       progression_threshold_pct = EXCLUDED.progression_threshold_pct,
                       qc_required = EXCLUDED.qc_required, updated_at = now()
                   WHERE (pipelines.progression_threshold_pct, pipelines.qc_required)
                         IS DISTINCT FROM (EXCLUDED.progression_threshold_pct, EXCLUDED.qc_required)""",
                (name, settings.sinks.progression_threshold_pct.get(name), qc.get(name, False)),
            )
