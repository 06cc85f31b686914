"""Migrations on the real PostgreSQL: applied in order, recorded once, safe to run twice or concurrently."""

from __future__ import annotations

import threading

import pytest

from radstream.db.connect import connect
from radstream.db.migrate import available, migrate
from radstream.settings import Settings

pytestmark = [pytest.mark.postgres]


def test_migrate_twice_applies_once(pg_settings: Settings) -> None:
    first = migrate(pg_settings)
    assert [m.version for m in first] == [m.version for m in available()]
    assert migrate(pg_settings) == []
    with connect(pg_settings, autocommit=True) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert [(m.version, m.name) for m in available()] == [(int(v), str(n)) for v, n in rows]
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()}
    for needed in ("patients", "studies", "series", "requests", "results", "measurements", "detections",
                   "qc_decisions", "reviews", "review_findings", "users", "audit_log", "blinding_map",
                   "worklist_claims", "pipelines", "v_longitudinal", "v_longitudinal_latest", "v_worklist",
                   "pipeline_runs"):
        assert needed in tables, needed


def test_concurrent_migrations_apply_each_version_once(pg_settings: Settings) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append([m.version for m in migrate(pg_settings)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in available()]


def test_settings_thresholds_reach_the_pipelines_table(pg_settings: Settings) -> None:
    s = pg_settings.model_copy(update={"sinks": pg_settings.sinks.model_copy(
        update={"progression_threshold_pct": {"brain-tumour": 40.0, "liver": 10.0}})})
    migrate(s)
    with connect(s, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT name, progression_threshold_pct FROM pipelines").fetchall())
        qc = dict(conn.execute("SELECT name, qc_required FROM pipelines").fetchall())
    assert rows["brain-tumour"] == 40.0 and rows["liver"] == 10.0 and rows["hip-fracture"] is None
    assert qc == {"brain-tumour": False, "liver": False, "hip-fracture": True, "brain-extraction": False}
