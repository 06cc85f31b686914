"""The results sink: inference requests and results -> PostgreSQL (``radstream sink results``)."""

from __future__ import annotations

from typing import Any

import psycopg
from radstream.consumers.sinks.runner import SinkSpec

from radstream.db.migrate import sync_pipelines
from radstream.db.results_writer import ResultRows, prepare_connection, write_result_rows
from radstream.settings import Settings


def _write(conn: psycopg.Connection[Any], rows: Any) -> None:
    write_result_rows(conn, rows)


def results_spec(settings: Settings) -> SinkSpec:
    """Results, plus every pipeline's requests topic (the exams each pipeline received, for the report)."""
    topics = (settings.topic("results"), *(settings.topic(f"requests.{p}") for p in settings.pipeline_names()))

    def prepare(conn: psycopg.Connection[Any]) -> None:
        # the pipeline files decide the QC gate: a file changed since the last migration counts from now
        sync_pipelines(conn, settings)
        prepare_connection(conn)

    return SinkSpec(name="results", topics=topics, new_rows=ResultRows, write=_write, prepare=prepare)
