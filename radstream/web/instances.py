"""The source-instance index the viewer reads (table ``source_instances``, migration 0009)."""

from __future__ import annotations

from typing import Any

import psycopg

from radstream.events.models import InferenceRequested

_INSERT = """INSERT INTO source_instances (sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid,
                                           store_uri, instance_number, position_along_normal, received_at)
             VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
             ON CONFLICT (sop_instance_uid) DO UPDATE SET store_uri = EXCLUDED.store_uri,
                 instance_number = EXCLUDED.instance_number,
                 position_along_normal = EXCLUDED.position_along_normal"""


def index_request(conn: psycopg.Connection[Any], event: InferenceRequested) -> int:
    """Record where every instance of the request's selected series lies; idempotent.

    The results sink fills the same table in its batches (radstream.db.results_writer); this
    one-request path serves callers that seed the viewer without running the sink.
    """
    rows = [
        (i.sop_instance_uid, s.series_instance_uid, event.study_instance_uid, i.sop_class_uid, i.store_uri,
         i.instance_number, i.position_along_normal, i.received_at)
        for s in event.series for i in s.instances
    ]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(_INSERT, rows)
    return len(rows)


def series_instances(conn: psycopg.Connection[Any], series_instance_uid: str) -> list[tuple[str, str]]:
    """(SOP Instance UID, store URI) of one series, in slice order."""
    rows = conn.execute(
        """SELECT sop_instance_uid, store_uri FROM source_instances WHERE series_instance_uid = %s
           ORDER BY position_along_normal NULLS LAST, instance_number NULLS LAST, sop_instance_uid""",
        (series_instance_uid,),
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]
