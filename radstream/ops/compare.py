"""Agreement between two model versions of a pipeline on the same studies (results in PostgreSQL).

The newest completed result per (study, version) is compared, live, shadow and replayed alike:
volumes per label (mean absolute and relative difference) and detections per label (same finding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from radstream.settings import Settings

_LATEST = """
SELECT DISTINCT ON (study_instance_uid) result_id, study_instance_uid
FROM results
WHERE pipeline = %(pipeline)s AND model_version = %(version)s AND status = 'completed'
ORDER BY study_instance_uid, finished_at DESC
"""


@dataclass
class LabelStats:
    label: str
    pairs: int = 0
    mean_abs_diff: float = 0.0
    mean_rel_diff_pct: float = 0.0
    agree: int = 0  # detections: same finding


@dataclass
class Comparison:
    pipeline: str
    a: str
    b: str
    studies_a: int
    studies_b: int
    common: int
    volumes: list[LabelStats] = field(default_factory=list)
    detections: list[LabelStats] = field(default_factory=list)

    @property
    def detection_agreement(self) -> float | None:
        n = sum(d.pairs for d in self.detections)
        return None if n == 0 else sum(d.agree for d in self.detections) / n


def compare(settings: Settings, pipeline: str, a: str, b: str) -> Comparison:
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        ra = dict((s, r) for r, s in conn.execute(_LATEST, {"pipeline": pipeline, "version": a}).fetchall())
        rb = dict((s, r) for r, s in conn.execute(_LATEST, {"pipeline": pipeline, "version": b}).fetchall())
        common = sorted(set(ra) & set(rb))
        pairs = [(ra[s], rb[s]) for s in common]
        out = Comparison(pipeline, a, b, len(ra), len(rb), len(common))
        if not pairs:
            return out
        ids_a, ids_b = [p[0] for p in pairs], [p[1] for p in pairs]
        vol = conn.execute(
            """
            WITH p AS (SELECT unnest(%(a)s::text[]) AS ra, unnest(%(b)s::text[]) AS rb)
            SELECT ma.label, count(*), avg(abs(ma.value - mb.value)),
                   avg(abs(ma.value - mb.value) / nullif(abs(ma.value), 0)) * 100
            FROM p JOIN measurements ma ON ma.result_id = p.ra
                   JOIN measurements mb ON mb.result_id = p.rb AND mb.label = ma.label AND mb.name = ma.name
            GROUP BY ma.label ORDER BY ma.label
            """, {"a": ids_a, "b": ids_b}).fetchall()
        out.volumes = [LabelStats(lbl, n, float(d or 0), float(r or 0)) for lbl, n, d, r in vol]
        det = conn.execute(
            """
            WITH p AS (SELECT unnest(%(a)s::text[]) AS ra, unnest(%(b)s::text[]) AS rb)
            SELECT da.label, count(*), count(*) FILTER (WHERE da.finding = db.finding)
            FROM p JOIN detections da ON da.result_id = p.ra
                   JOIN detections db ON db.result_id = p.rb AND db.label = da.label
                        AND db.sop_instance_uid IS NOT DISTINCT FROM da.sop_instance_uid
            GROUP BY da.label ORDER BY da.label
            """, {"a": ids_a, "b": ids_b}).fetchall()
        out.detections = [LabelStats(lbl, n, agree=ag) for lbl, n, ag in det]
    return out
