"""Validation-study figures per pipeline, as a governance body asks for them (the paper's Results).

Exams received (requests routed to the pipeline), processed (a completed result), failed (only
failures, no result); turnaround = last instance received -> result stored; pipeline run time
= worker start -> finish; reviews done, time spent per review, and reader agreement with the
model (share of judged findings marked "agree"). Shadow runs are left out unless asked for.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

_SQL = """
WITH exams AS (
    SELECT study_instance_uid FROM requests
    WHERE pipeline = %(p)s AND (%(shadow)s OR NOT shadow)
      AND (%(since)s::timestamptz IS NULL OR last_received_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR last_received_at < %(until)s)
    UNION
    SELECT study_instance_uid FROM results
    WHERE pipeline = %(p)s AND (%(shadow)s OR NOT shadow)
      AND (%(since)s::timestamptz IS NULL OR last_received_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR last_received_at < %(until)s)
),
res AS (
    SELECT r.* FROM results r JOIN exams e USING (study_instance_uid)
    WHERE r.pipeline = %(p)s AND (%(shadow)s OR NOT r.shadow)
),
done AS (
    SELECT extract(epoch FROM stored_at - last_received_at) AS turnaround_s,
           extract(epoch FROM finished_at - started_at) AS run_s
    FROM res WHERE status = 'completed'
),
rev AS (
    SELECT rv.* FROM reviews rv JOIN res ON res.result_id = rv.result_id
),
fnd AS (
    SELECT f.agree FROM review_findings f JOIN rev ON rev.review_id = f.review_id WHERE f.agree IS NOT NULL
)
SELECT
    (SELECT count(*) FROM exams) AS exams_received,
    (SELECT count(DISTINCT study_instance_uid) FROM res WHERE status = 'completed') AS exams_processed,
    (SELECT count(DISTINCT study_instance_uid) FROM res f WHERE status = 'failed'
        AND NOT EXISTS (SELECT 1 FROM res c WHERE c.study_instance_uid = f.study_instance_uid
                        AND c.status = 'completed')) AS exams_failed,
    (SELECT count(*) FROM done) AS results,
    (SELECT avg(turnaround_s) FROM done) AS turnaround_s_mean,
    (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY turnaround_s) FROM done) AS turnaround_s_p50,
    (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY turnaround_s) FROM done) AS turnaround_s_p90,
    (SELECT avg(run_s) FROM done) AS run_time_s_mean,
    (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY run_s) FROM done) AS run_time_s_p50,
    (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY run_s) FROM done) AS run_time_s_p90,
    (SELECT count(*) FROM rev) AS reviews_done,
    (SELECT count(DISTINCT result_id) FROM rev) AS results_reviewed,
    (SELECT avg(time_spent_s) FROM rev) AS review_time_s_mean,
    (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY time_spent_s) FROM rev) AS review_time_s_p50,
    (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY time_spent_s) FROM rev) AS review_time_s_p90,
    (SELECT count(*) FROM fnd) AS findings_judged,
    (SELECT 100.0 * avg(agree::int) FROM fnd) AS agreement_pct
"""


@dataclass(frozen=True, slots=True)
class PipelineReport:
    pipeline: str
    exams_received: int
    exams_processed: int
    exams_failed: int
    results: int
    turnaround_s_mean: float | None
    turnaround_s_p50: float | None
    turnaround_s_p90: float | None
    run_time_s_mean: float | None
    run_time_s_p50: float | None
    run_time_s_p90: float | None
    reviews_done: int
    results_reviewed: int
    review_time_s_mean: float | None
    review_time_s_p50: float | None
    review_time_s_p90: float | None
    findings_judged: int
    agreement_pct: float | None

    @property
    def exams_pending(self) -> int:
        return self.exams_received - self.exams_processed - self.exams_failed

    def as_row(self) -> dict[str, Any]:
        return {**asdict(self), "exams_pending": self.exams_pending}


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def pipeline_report(
    conn: psycopg.Connection[Any],
    pipeline: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    include_shadow: bool = False,
) -> PipelineReport:
    """The figures of one pipeline for exams whose last instance arrived in [since, until)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SQL, {"p": pipeline, "shadow": include_shadow, "since": since, "until": until})
        row = cur.fetchone()
    assert row is not None
    values: dict[str, Any] = {"pipeline": pipeline}
    for f in fields(PipelineReport):
        if f.name == "pipeline":
            continue
        v = row[f.name]
        values[f.name] = _num(v) if f.type in ("float | None",) else int(v or 0)
    return PipelineReport(**values)


def pipelines_in_db(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT pipeline FROM requests UNION SELECT pipeline FROM results ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def write_csv(reports: list[PipelineReport], path: Path) -> None:
    """One row per pipeline, with a header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [*(f.name for f in fields(PipelineReport)), "exams_pending"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for r in reports:
            w.writerow(r.as_row())


def format_text(r: PipelineReport) -> str:
    def s(v: float | None, unit: str = "s") -> str:
        return "-" if v is None else f"{v:.2f} {unit}"

    pct = "-" if r.agreement_pct is None else f"{r.agreement_pct:.1f}% of {r.findings_judged} findings"
    return "\n".join([
        f"pipeline {r.pipeline}",
        f"  exams received   {r.exams_received}",
        f"  exams processed  {r.exams_processed}",
        f"  exams failed     {r.exams_failed}",
        f"  exams pending    {r.exams_pending}",
        f"  turnaround       mean {s(r.turnaround_s_mean)}  p50 {s(r.turnaround_s_p50)}  p90 {s(r.turnaround_s_p90)}"
        "  (last instance received -> result stored)",
        f"  pipeline run     mean {s(r.run_time_s_mean)}  p50 {s(r.run_time_s_p50)}  p90 {s(r.run_time_s_p90)}",
        f"  reviews done     {r.reviews_done} (of {r.results_reviewed} results)",
        f"  review time      mean {s(r.review_time_s_mean)}  p50 {s(r.review_time_s_p50)}"
        f"  p90 {s(r.review_time_s_p90)}",
        f"  agreement        {pct}",
    ])
