"""Write clinician feedback (ReviewSubmitted, QcDecided), idempotently.

Reviews are keyed by ``review_id`` (an amended review, with a newer event, replaces the
older one and its findings), QC decisions by ``decision_id`` (immutable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import psycopg

from radstream.db.staging import copy_rows, ensure_stages, prepare_copies
from radstream.dicom_seg import SEG_SOP_CLASS
from radstream.events.models import Event, InstanceReceived, QcDecided, ReviewSubmitted

FEEDBACK_EVENTS: tuple[type[Event], ...] = (ReviewSubmitted, QcDecided, InstanceReceived)

STAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS s_reviews (LIKE reviews INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_review_findings (LIKE review_findings, event_id text NOT NULL)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_qc_decisions (LIKE qc_decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_touched_reviews (review_id text, event_id text, was_update boolean)"
    " ON COMMIT DELETE ROWS",
)

REVIEW_COLS = ("review_id", "event_id", "producer", "result_id", "study_instance_uid", "pipeline", "reviewer",
               "comment", "time_spent_s", "blinding_hash", "corrected_seg_uri", "corrected_volume_ml",
               "submitted_at", "rating")
FINDING_COLS = ("review_id", "idx", "finding", "agree", "reader_label", "comment", "event_id")
QC_COLS = ("decision_id", "event_id", "producer", "result_id", "study_instance_uid", "pipeline", "reviewer",
           "decision", "reason", "decided_at")


def _require(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"event has an empty {what}")
    return value


def _rating(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 5:
        raise ValueError(f"rating must be 1 to 5, not {value}")
    return value


@dataclass(slots=True)
class FeedbackRows:
    reviews: list[tuple[Any, ...]] = field(default_factory=list)
    findings: list[tuple[Any, ...]] = field(default_factory=list)
    qc: list[tuple[Any, ...]] = field(default_factory=list)
    # human segmentations received by C-STORE (the instances topic; every other instance is ignored)
    segmentations: list[InstanceReceived] = field(default_factory=list)

    def add(self, event: Event) -> None:
        if isinstance(event, ReviewSubmitted):
            rid = _require(event.review_id, "review_id")
            _require(event.result_id, "result_id")
            if not math.isfinite(event.time_spent_s) or event.time_spent_s < 0:
                raise ValueError(f"time_spent_s must be a finite number >= 0, not {event.time_spent_s}")
            self.reviews.append((
                rid, event.event_id, event.producer, event.result_id, event.study_instance_uid, event.pipeline,
                _require(event.reviewer, "reviewer"), event.comment, event.time_spent_s, event.blinding_hash,
                event.corrected_seg_uri, event.corrected_volume_ml, event.occurred_at, _rating(event.rating),
            ))
            for i, f in enumerate(event.findings):
                self.findings.append((rid, i, f.finding, f.agree, f.reader_label, f.comment, event.event_id))
        elif isinstance(event, QcDecided):
            self.qc.append((
                _require(event.decision_id, "decision_id"), event.event_id, event.producer,
                _require(event.result_id, "result_id"), event.study_instance_uid, event.pipeline,
                _require(event.reviewer, "reviewer"), str(event.decision), event.reason, event.occurred_at,
            ))
        elif isinstance(event, InstanceReceived):
            if event.sop_class_uid == SEG_SOP_CLASS:
                self.segmentations.append(event)
        else:
            raise TypeError(f"the feedback sink does not take {type(event).__name__} events")

    def seal(self) -> None:
        """Nothing to work out ahead: the feedback writer stages rows as they are."""

    def count(self) -> int:
        return len(self.reviews) + len(self.findings) + len(self.qc) + len(self.segmentations)


_REVIEW_UPDATABLE = [c for c in REVIEW_COLS if c != "review_id"]

MERGE_SQL = (
    f"""WITH up AS (
           INSERT INTO reviews ({", ".join(REVIEW_COLS)})
           SELECT DISTINCT ON (review_id) {", ".join(REVIEW_COLS)} FROM s_reviews
           ORDER BY review_id, submitted_at DESC, event_id
           ON CONFLICT (review_id) DO UPDATE SET
               {", ".join(f"{c} = EXCLUDED.{c}" for c in _REVIEW_UPDATABLE)}
           WHERE reviews.event_id <> EXCLUDED.event_id AND EXCLUDED.submitted_at >= reviews.submitted_at
           RETURNING review_id, event_id, xmax <> 0 AS was_update
       )
       INSERT INTO s_touched_reviews SELECT * FROM up""",
    """DELETE FROM review_findings f USING s_touched_reviews t WHERE t.was_update AND f.review_id = t.review_id""",
    """INSERT INTO review_findings (review_id, idx, finding, agree, reader_label, comment)
       SELECT DISTINCT ON (s.review_id, s.idx) s.review_id, s.idx, s.finding, s.agree, s.reader_label, s.comment
       FROM s_review_findings s JOIN s_touched_reviews t ON t.review_id = s.review_id AND t.event_id = s.event_id
       ORDER BY s.review_id, s.idx
       ON CONFLICT DO NOTHING""",
    f"""INSERT INTO qc_decisions ({", ".join(QC_COLS)})
       SELECT DISTINCT ON (decision_id) {", ".join(QC_COLS)} FROM s_qc_decisions ORDER BY decision_id
       ON CONFLICT (decision_id) DO NOTHING""",
)


# all merges in one simple-protocol query: one round trip instead of one per statement (no parameters)
_MERGE_ALL = ";\n".join(MERGE_SQL).encode("utf-8")


def prepare_connection(conn: psycopg.Connection[Any]) -> None:
    """Set up a new connection for :func:`write_feedback_rows` before its first batch."""
    prepare_copies(conn, STAGES, (("s_reviews", REVIEW_COLS), ("s_review_findings", FINDING_COLS),
                                  ("s_qc_decisions", QC_COLS)))


def write_feedback_rows(conn: psycopg.Connection[Any], rows: FeedbackRows) -> None:
    """Merge one batch in one transaction (``conn`` in autocommit mode)."""
    ensure_stages(conn, STAGES)
    with conn.transaction(), conn.cursor() as cur:
        if rows.reviews:
            copy_rows(cur, "s_reviews", REVIEW_COLS, rows.reviews)
        if rows.findings:
            copy_rows(cur, "s_review_findings", FINDING_COLS, rows.findings)
        if rows.qc:
            copy_rows(cur, "s_qc_decisions", QC_COLS, rows.qc)
        cur.execute(_MERGE_ALL)
