"""The feedback sink: reviews, QC decisions and human segmentations -> PostgreSQL (``radstream sink feedback``).

Human segmentations (DICOM SEG sent by C-STORE from a segmentation tool, for the blinded study)
are read from the instances topic: every other instance event is skipped.
"""

from __future__ import annotations

from typing import Any

import psycopg
from radstream.consumers.sinks.runner import SinkSpec

from radstream.db.feedback_writer import FeedbackRows, prepare_connection, write_feedback_rows
from radstream.db.segmentations import register_received
from radstream.settings import Settings


def feedback_spec(settings: Settings) -> SinkSpec:
    def write(conn: psycopg.Connection[Any], rows: Any) -> None:
        write_feedback_rows(conn, rows)
        for e in rows.segmentations:  # after the reviews' transaction; registration is idempotent on the SOP UID
            register_received(conn, settings, sop_instance_uid=e.sop_instance_uid,
                              study_instance_uid=e.study_instance_uid, calling_ae_title=e.calling_ae_title,
                              store_uri=e.store_uri, sha256=e.sha256)

    return SinkSpec(name="feedback", topics=(settings.topic("feedback"), settings.topic("instances")),
                    new_rows=FeedbackRows, write=write, prepare=prepare_connection)
