"""The feedback sink: reviews and QC decisions -> PostgreSQL (``radstream sink feedback``)."""

from __future__ import annotations

from typing import Any

import psycopg
from radstream.consumers.sinks.runner import SinkSpec

from radstream.db.feedback_writer import FeedbackRows, prepare_connection, write_feedback_rows
from radstream.settings import Settings


def _write(conn: psycopg.Connection[Any], rows: Any) -> None:
    write_feedback_rows(conn, rows)


def feedback_spec(settings: Settings) -> SinkSpec:
    return SinkSpec(name="feedback", topics=(settings.topic("feedback"),), new_rows=FeedbackRows, write=_write,
                    prepare=prepare_connection)
