"""The results writer's two paths on the real database: new keys COPYed straight into their
tables, existing keys merged; and the fall-back to a full merge when another writer stores a
"new" key between the check and the COPY."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.db.results_writer import ResultRows, merge_result_rows, write_result_rows
from radstream.events.models import Detection, Event, Measurement
from radstream.settings import Settings
from tests.integration.sink_events import T0, completed, failed, requested, uid
from tests.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

# columns set by now() at write time: not comparable between two databases
_VOLATILE = {"created_at", "updated_at", "stored_at"}
_TABLES = ("patients", "studies", "series", "requests", "results", "measurements", "detections",
           "blinding_map", "source_instances")


@pytest.fixture
def twin(pg_admin_conninfo: str, pg_settings: Settings) -> Iterator[Settings]:
    """A second fresh, migrated database next to ``pg_settings``'."""
    name = f"twin_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    s = pg_settings.model_copy(update={"postgres": pg_settings.postgres.model_copy(update={"database": name})})
    migrate(s)
    yield s
    with psycopg.connect(pg_admin_conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _rows(events: list[Event]) -> ResultRows:
    rows = ResultRows()
    for e in events:
        rows.add(e)
    return rows


def _snapshot(s: Settings) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with connect(s, autocommit=True) as conn:
        for t in _TABLES:
            cur = conn.execute(f"SELECT * FROM {t}".encode())
            keep = [i for i, d in enumerate(cur.description or []) if d.name not in _VOLATILE]
            out[t] = sorted((tuple(row[i] for i in keep) for row in cur.fetchall()), key=repr)
    return out


def _batches() -> list[list[Event]]:
    """Batches that mix new keys, existing keys, updates and in-batch duplicates."""
    first = [requested(f"p{i % 3}", uid("w", i), study_date="20240101", last_received_at=T0 + timedelta(minutes=i))
             for i in range(6)]
    done = [completed(f"p{i % 3}", uid("w", i), volume_ml=float(i + 1), study_date="20240101",
                      last_received_at=T0 + timedelta(minutes=i), blinding_hash=f"bh{i}",
                      detections=[Detection("lesion", "enhancing", 0.5 + i / 10, [1.0, 2.0, 3.0, float(i)])])
            for i in range(4)]
    fails = [failed(f"p{i % 3}", uid("w", i), last_received_at=T0 + timedelta(minutes=i)) for i in range(4, 6)]
    # batch 2: duplicates of batch 1, a retry's success replacing a failure, a newer result event
    # for an existing result (more measurements), new patients and studies, in-batch duplicates
    retry = completed("p1", uid("w", 4), volume_ml=44.0, last_received_at=T0 + timedelta(minutes=4))
    newer = completed("p0", uid("w", 0), volume_ml=99.0, run_s=5.0,
                      extra_measurements=[Measurement("volume", "oedema", 7.0, "mL")])
    newer.result_id = done[0].result_id
    fresh = [completed(f"q{i}", uid("w2", i), volume_ml=float(i), study_date="20240202",
                       last_received_at=T0 + timedelta(hours=1, minutes=i)) for i in range(5)]
    late_patient_seen = completed("p2", uid("w", 2), last_received_at=T0 + timedelta(days=3), volume_ml=3.0)
    late_patient_seen.result_id = done[2].result_id
    late_patient_seen.event_id = done[2].event_id  # the same event again, with a later patient time
    second = [*done[:2], retry, newer, *fresh, fresh[0], fresh[1], *first[:3],
              requested("q0", uid("w2", 0), study_date="20240202")]
    return [[*first, *done, *fails], second, [late_patient_seen, *fresh[2:]]]


def test_split_path_stores_what_the_merge_path_stores(pg_settings: Settings, twin: Settings) -> None:
    """Every batch written by the split path (direct COPY + merge of existing keys) leaves the
    same tables as the same batches merged row by row through the staging tables."""
    migrate(pg_settings)
    ways = []
    with connect(pg_settings, autocommit=True) as split_conn, connect(twin, autocommit=True) as merge_conn:
        for batch in _batches():
            ways.append(write_result_rows(split_conn, _rows(batch)))
            merge_result_rows(merge_conn, _rows(batch))
            assert _snapshot(pg_settings) == _snapshot(twin)
    assert ways == ["split", "split", "split"]
    got = _snapshot(pg_settings)
    assert len(got["results"]) == 11 and len(got["patients"]) == 8
    # the retry's success replaced the failure; the newer event replaced the measurements
    with connect(pg_settings, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM results WHERE status = 'failed'").fetchone() == (1,)
        volumes = conn.execute("SELECT label, value FROM measurements m JOIN results r USING (result_id)"
                               " WHERE r.study_instance_uid = %s ORDER BY label", (uid("w", 0),)).fetchall()
        assert volumes == [("oedema", 7.0), ("tumour", 99.0)]



def test_patient_rows_are_written_once_and_their_times_come_from_their_studies(pg_settings: Settings) -> None:
    """A patient row is never rewritten by later batches; ``v_patients`` gives the first and last
    times from the patient's studies, whichever batch (or order) they came in."""
    migrate(pg_settings)
    with connect(pg_settings, autocommit=True) as conn:
        first, *later = _batches()
        write_result_rows(conn, _rows(first))
        created = dict(conn.execute("SELECT patient_key, xmin::text FROM patients").fetchall())
        assert sorted(created) == ["p0", "p1", "p2"]
        for batch in later:  # all three patients again, with later times
            write_result_rows(conn, _rows(batch))
        stored = dict(conn.execute("SELECT patient_key, xmin::text FROM patients").fetchall())
        assert {k: stored[k] for k in created} == created  # the same row versions: never rewritten
        seen = {k: (first, last, n) for k, first, last, n in conn.execute(
            "SELECT patient_key, first_seen_at, last_seen_at, studies FROM v_patients").fetchall()}
    # p2's studies are uid("w", 2) and uid("w", 5): the latest time is the replayed event's (3 days on)
    assert seen["p2"][2] == 2 and seen["p2"][1] == T0 + timedelta(days=3)
    assert seen["p0"][0] <= T0 and seen["p1"][0] <= T0 + timedelta(minutes=1)
    assert seen["q4"][1] == T0 + timedelta(hours=1, minutes=4) and seen["q4"][2] == 1

def test_a_key_stored_meanwhile_by_another_writer_falls_back_to_the_merge(pg_settings: Settings) -> None:
    """Another writer stores one of the batch's result ids after the check: the COPY waits for it,
    fails on the unique key, and the whole batch is merged, with the merge's outcome."""
    migrate(pg_settings)
    ours = [completed("pc", uid("c", i), volume_ml=float(i + 10)) for i in range(3)]
    theirs = failed("pc", uid("c", 0))
    theirs.result_id = ours[0].result_id
    with connect(pg_settings, autocommit=True) as other:  # their patient and study exist
        write_result_rows(other, _rows([theirs]))
        other.execute("DELETE FROM results WHERE result_id = %s", (theirs.result_id,))
    # their result row, in a transaction left open: invisible to our check, but its key is taken
    blocker = connect(pg_settings)
    blocker.execute("INSERT INTO results (result_id, event_id, request_id, producer, patient_key,"
                    " study_instance_uid, pipeline, pipeline_version, model_name, model_version, status,"
                    " finished_at, last_received_at) VALUES (%s, 'e-other', 'r', 'x', 'pc', %s, 'brain-tumour',"
                    " '1', 'm', '1', 'failed', %s, %s)",
                    (theirs.result_id, theirs.study_instance_uid, T0, T0))
    outcome: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with connect(pg_settings, autocommit=True, application_name="writer-under-test") as conn:
                outcome.append(write_result_rows(conn, _rows(ours)))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    with connect(pg_settings, autocommit=True) as watch:
        eventually(lambda: watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'writer-under-test'"
            " AND wait_event_type = 'Lock'").fetchone() == (1,), 30, what="our COPY waiting on their key")
    blocker.commit()
    blocker.close()
    t.join(30)
    assert not errors, errors
    assert outcome == ["merged"]
    with connect(pg_settings, autocommit=True) as conn:
        # the completed result replaced their failure (the merge's rule); all three stored once
        rows = conn.execute("SELECT result_id, status, event_id FROM results ORDER BY result_id").fetchall()
        assert sorted(r[0] for r in rows) == sorted(e.result_id for e in ours)
        assert {r[1] for r in rows} == {"completed"}
        assert conn.execute("SELECT count(*) FROM measurements").fetchone() == (3,)


def test_writers_sharing_patients_and_studies_neither_deadlock_nor_lose_rows(pg_settings: Settings,
                                                                            twin: Settings) -> None:
    """Two sink replicas write at once: results are keyed by study, requests by patient, so both
    replicas write the same patient, study and series rows, in whatever order their batches hold
    them. No write may fail (a deadlock would roll a batch back), and the tables end as the same
    events merged one batch after the other."""
    import random

    migrate(pg_settings)
    rnd = random.Random(7)
    patients = [f"shared-{i:03d}" for i in range(60)]
    rounds: list[tuple[list[Event], list[Event]]] = []
    for r in range(6):
        studies = [(p, uid("shared", r, p, k)) for p in patients for k in range(2)]
        a: list[Event] = [completed(p, s) for p, s in studies[::2]] + [requested(p, s) for p, s in studies[1::2]]
        b: list[Event] = [requested(p, s) for p, s in studies[::2]] + [completed(p, s) for p, s in studies[1::2]]
        rnd.shuffle(a)
        rnd.shuffle(b)
        rounds.append((a, b))
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(side: int) -> None:
        try:
            with connect(pg_settings, autocommit=True) as conn:
                for batch in rounds:
                    start.wait(30)
                    write_result_rows(conn, _rows(batch[side]))
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with connect(twin, autocommit=True) as conn:
        for a, b in rounds:
            merge_result_rows(conn, _rows(a))
            merge_result_rows(conn, _rows(b))
    got, want = _snapshot(pg_settings), _snapshot(twin)
    assert len(got["results"]) == 6 * 120 and len(got["patients"]) == 60
    assert got == want
