"""What the pages read from PostgreSQL. Every value from a request goes in as a bound parameter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg.rows import dict_row

STATUSES = ("new", "in review", "done")
QC_STATUSES = ("pending", "approved", "rejected", "not_required")


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    pipeline: str | None = None
    status: str | None = None
    q: str | None = None  # accession number or study UID, substring
    date_from: date | None = None
    date_to: date | None = None
    qc_status: str | None = None
    limit: int = 200


def clean(text: str | None) -> str | None:
    """Text from a request as PostgreSQL can hold it (no NUL characters)."""
    return None if text is None else text.replace("\x00", "")


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` literally (its own % and _ escaped)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def worklist(conn: psycopg.Connection[Any], username: str, f: WorklistFilter, *,
             readers_only: bool) -> list[dict[str, Any]]:
    """The worklist as ``username`` sees it: status is per reader (new, in review = opened, done = reviewed)."""
    sql = """
        SELECT * FROM (
            SELECT w.*,
                   CASE WHEN %(user)s = ANY(COALESCE(w.reviewers, '{}')) THEN 'done'
                        WHEN %(user)s = ANY(COALESCE(w.claimed_by, '{}')) THEN 'in review'
                        ELSE 'new' END AS my_status,
                   (SELECT string_agg(DISTINCT se.series_description, ' | ')
                      FROM results r JOIN series se ON se.series_instance_uid = ANY(r.series_instance_uids)
                     WHERE r.result_id = w.result_id) AS series_descriptions
            FROM v_worklist w
            WHERE (NOT %(readers_only)s OR w.visible_to_readers) AND w.superseded_by_result_id IS NULL
        ) x
        WHERE (%(pipeline)s::text IS NULL OR x.pipeline = %(pipeline)s)
          AND (%(status)s::text IS NULL OR x.my_status = %(status)s)
          AND (%(qc)s::text IS NULL OR x.qc_status = %(qc)s)
          AND (%(q)s::text IS NULL OR x.accession_number ILIKE %(q)s ESCAPE '\\'
               OR x.study_instance_uid LIKE %(q)s ESCAPE '\\')
          AND (%(dfrom)s::date IS NULL OR x.study_date >= %(dfrom)s)
          AND (%(dto)s::date IS NULL OR x.study_date <= %(dto)s)
        ORDER BY (x.my_status = 'done'), x.stored_at DESC
        LIMIT %(limit)s"""
    text = clean(f.q)
    params = {"user": username, "readers_only": readers_only, "pipeline": clean(f.pipeline) or None,
              "status": f.status or None, "qc": f.qc_status or None, "q": _like(text) if text else None,
              "dfrom": f.date_from, "dto": f.date_to, "limit": max(1, min(f.limit, 1000))}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def worklist_row(conn: psycopg.Connection[Any], result_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM v_worklist WHERE result_id = %s", (clean(result_id),))
        return cur.fetchone()


def result(conn: psycopg.Connection[Any], result_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT r.*, COALESCE(r.accession_number, s.accession_number) AS accession,
                      COALESCE(r.study_date, s.study_date) AS date,
                      COALESCE(r.study_time, s.study_time) AS time,
                      s.study_description, s.institution_name, s.station_name
               FROM results r LEFT JOIN studies s USING (study_instance_uid)
               WHERE r.result_id = %s""", (clean(result_id),))
        return cur.fetchone()


def series_of(conn: psycopg.Connection[Any], uids: list[str]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT series_instance_uid, modality, series_description, instance_count FROM series
                       WHERE series_instance_uid = ANY(%s) ORDER BY series_instance_uid""", (uids,))
        return list(cur.fetchall())


def measurements(conn: psycopg.Connection[Any], result_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT name, label, value, unit FROM measurements WHERE result_id = %s ORDER BY name, label",
                    (result_id,))
        return list(cur.fetchall())


def detections(conn: psycopg.Connection[Any], result_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT idx, label, finding, score, box, sop_instance_uid FROM detections
                       WHERE result_id = %s ORDER BY idx""", (result_id,))
        return list(cur.fetchall())


def longitudinal(conn: psycopg.Connection[Any], patient_key: str, pipeline: str, *, reviewer: str | None = None,
                 readers_only: bool = False) -> list[dict[str, Any]]:
    """A patient's timepoints (v_longitudinal) with the newest corrected volume of each.

    ``reviewer``: only that reader's own corrections (readers read independently). ``readers_only``:
    only timepoints whose result readers may see (QC), as on the worklist. A correction is the SEG's
    total volume: it is shown where the result has one mL measurement.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT l.*, c.corrected_volume_ml, c.corrected_by, c.corrected_at
                       FROM v_longitudinal l
                       LEFT JOIN LATERAL (
                           SELECT rv.corrected_volume_ml, rv.reviewer AS corrected_by, rv.submitted_at AS corrected_at
                           FROM reviews rv
                           WHERE rv.result_id = l.result_id AND rv.corrected_volume_ml IS NOT NULL
                             AND (%(who)s::text IS NULL OR rv.reviewer = %(who)s)
                             AND (SELECT count(*) FROM measurements m
                                  WHERE m.result_id = l.result_id AND m.unit = 'mL') = 1
                           ORDER BY rv.submitted_at DESC LIMIT 1
                       ) c ON true
                       WHERE l.patient_key = %(pk)s AND l.pipeline = %(p)s
                         AND (NOT %(readers_only)s OR EXISTS (
                             SELECT 1 FROM v_worklist w WHERE w.result_id = l.result_id AND w.visible_to_readers))
                       ORDER BY l.measurement, l.label, l.timepoint""",
                    {"pk": patient_key, "p": pipeline, "who": reviewer, "readers_only": readers_only})
        return list(cur.fetchall())


def reviews_of(conn: psycopg.Connection[Any], result_id: str, reviewer: str | None = None) -> list[dict[str, Any]]:
    """The reviews of a result; with ``reviewer``, only that reader's own (independent reads)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT rv.*, COALESCE((SELECT json_agg(json_build_object('finding', f.finding, 'agree', f.agree,
                                              'reader_label', f.reader_label, 'comment', f.comment) ORDER BY f.idx)
                                       FROM review_findings f WHERE f.review_id = rv.review_id), '[]') AS findings
               FROM reviews rv WHERE rv.result_id = %s AND (%s::text IS NULL OR rv.reviewer = %s)
               ORDER BY rv.submitted_at""", (result_id, reviewer, reviewer))
        return list(cur.fetchall())


def results_for_study(conn: psycopg.Connection[Any], study_instance_uid: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT * FROM v_worklist WHERE study_instance_uid = %s ORDER BY pipeline, stored_at DESC""",
                    (clean(study_instance_uid),))
        return list(cur.fetchall())


def results_for_accession(conn: psycopg.Connection[Any], accession: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT * FROM v_worklist WHERE accession_number = %s ORDER BY pipeline, stored_at DESC""",
                    (clean(accession),))
        return list(cur.fetchall())


def claim(conn: psycopg.Connection[Any], result_id: str, username: str) -> None:
    conn.execute("""INSERT INTO worklist_claims (result_id, username) VALUES (%s, %s) ON CONFLICT DO NOTHING""",
                 (result_id, username))


def qc_queue(conn: psycopg.Connection[Any], qc_status: str | None, pipeline: str | None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT * FROM v_worklist WHERE qc_required AND superseded_by_result_id IS NULL
                 AND (%(s)s::text IS NULL OR qc_status = %(s)s) AND (%(p)s::text IS NULL OR pipeline = %(p)s)
               ORDER BY (qc_status = 'pending') DESC, stored_at LIMIT 500""",
            {"s": clean(qc_status) or None, "p": clean(pipeline) or None})
        return list(cur.fetchall())


def blinding_map(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT b.*, r.pipeline, r.study_instance_uid FROM blinding_map b
                       LEFT JOIN results r USING (result_id) ORDER BY b.created_at DESC LIMIT 1000""")
        return list(cur.fetchall())


def pipelines(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT name FROM pipelines UNION SELECT DISTINCT pipeline FROM results ORDER BY 1").fetchall()]
