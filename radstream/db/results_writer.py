"""Write inference requests and results (InferenceRequested / InferenceCompleted / InferenceFailed).

Idempotent by construction: requests are keyed by ``request_id``, results by ``result_id``;
a duplicate event (same ``event_id``) changes nothing, a completed result is never replaced
by a failure of the same id, and measurements/detections always follow the winning event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from radstream.db.staging import copy_rows, ensure_stages
from radstream.events.models import Event, InferenceCompleted, InferenceFailed, InferenceRequested

RESULT_EVENTS: tuple[type[Event], ...] = (InferenceRequested, InferenceCompleted, InferenceFailed)

STAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS s_patients (LIKE patients INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_studies (LIKE studies INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_series (LIKE series INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_requests (LIKE requests INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_results (LIKE results INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_measurements (LIKE measurements, event_id text NOT NULL)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_detections (LIKE detections, event_id text NOT NULL)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_source_instances (LIKE source_instances INCLUDING DEFAULTS)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS s_touched_results (result_id text, event_id text, was_update boolean)"
    " ON COMMIT DELETE ROWS",
)

PATIENT_COLS = ("patient_key", "first_seen_at", "last_seen_at")
STUDY_COLS = ("study_instance_uid", "patient_key", "accession_number", "study_date", "first_received_at",
              "last_received_at")
SOURCE_INSTANCE_COLS = ("sop_instance_uid", "series_instance_uid", "study_instance_uid", "sop_class_uid",
                        "store_uri", "instance_number", "position_along_normal", "received_at")
SERIES_COLS = ("series_instance_uid", "study_instance_uid", "revision", "modality", "series_description",
               "instance_count")
REQUEST_COLS = ("request_id", "event_id", "patient_key", "study_instance_uid", "accession_number", "pipeline",
                "pipeline_version", "model_name", "model_version", "shadow", "replay_id", "trigger",
                "series_count", "instance_count", "study_date", "last_received_at", "requested_at")
RESULT_COLS = ("result_id", "event_id", "request_id", "producer", "patient_key", "study_instance_uid",
               "accession_number", "pipeline", "pipeline_version", "model_name", "model_version", "shadow",
               "replay_id", "status", "stage", "reason", "retriable", "attempts", "series_instance_uids",
               "outputs", "seg_uri", "sr_uri", "blinding_hash", "timings_ms", "study_date", "started_at",
               "finished_at", "last_received_at")
MEASUREMENT_COLS = ("result_id", "name", "label", "value", "unit", "event_id")
DETECTION_COLS = ("result_id", "idx", "label", "finding", "score", "box", "sop_instance_uid", "event_id")


def parse_study_date(value: str | None) -> date | None:
    """DICOM DA (YYYYMMDD, also the old YYYY.MM.DD) -> date; anything else -> None."""
    if not value:
        return None
    digits = value.strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _as_is(text: str) -> str:
    return text


def _jsonb(value: Any) -> Jsonb:
    """JSON serialised now (while the rows are built), not by the COPY on the writer's critical path."""
    return Jsonb(json.dumps(value), dumps=_as_is)


_EMPTY_JSONB = _jsonb({})


def _require(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"event has an empty {what}")
    return value


@dataclass(slots=True)
class ResultRows:
    """The rows one batch of result events turns into."""

    patients: list[tuple[Any, ...]] = field(default_factory=list)
    studies: list[tuple[Any, ...]] = field(default_factory=list)
    series: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    results: list[tuple[Any, ...]] = field(default_factory=list)
    measurements: list[tuple[Any, ...]] = field(default_factory=list)
    detections: list[tuple[Any, ...]] = field(default_factory=list)
    # where each source instance lies in the store (the review app's viewer reads it)
    source_instances: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, event: Event) -> None:
        """Add the rows of one event (raises ValueError/TypeError for an event that cannot be stored)."""
        if isinstance(event, InferenceRequested):
            self._request(event)
        elif isinstance(event, InferenceCompleted | InferenceFailed):
            self._result(event)
        else:
            raise TypeError(f"the results sink does not take {type(event).__name__} events")

    def count(self) -> int:
        return sum(len(x) for x in (self.patients, self.studies, self.series, self.requests, self.results,
                                    self.measurements, self.detections))

    def _patient_study(self, e: InferenceRequested | InferenceCompleted | InferenceFailed,
                       first: datetime | None, study_date: date | None) -> None:
        pk = _require(e.patient_key, "patient_key")
        study = _require(e.study_instance_uid, "study_instance_uid")
        self.patients.append((pk, e.last_received_at, e.last_received_at))
        self.studies.append((study, pk, e.accession_number, study_date, first, e.last_received_at))

    def _request(self, e: InferenceRequested) -> None:
        sd = parse_study_date(e.study_date)
        received = [i.received_at for s in e.series for i in s.instances]
        self._patient_study(e, min(received) if received else None, sd)
        for s in e.series:
            self.series.append((_require(s.series_instance_uid, "series_instance_uid"), e.study_instance_uid,
                                s.revision, s.modality, s.series_description, len(s.instances)))
            self.source_instances.extend(
                (i.sop_instance_uid, s.series_instance_uid, e.study_instance_uid, i.sop_class_uid, i.store_uri,
                 i.instance_number, i.position_along_normal, i.received_at)
                for i in s.instances
            )
        self.requests.append((
            _require(e.request_id, "request_id"), e.event_id, e.patient_key, e.study_instance_uid,
            e.accession_number, e.pipeline, e.pipeline_version, e.model_name, e.model_version, e.shadow,
            e.replay_id, str(e.trigger), len(e.series), sum(len(s.instances) for s in e.series), sd,
            e.last_received_at, e.occurred_at,
        ))

    def _result(self, e: InferenceCompleted | InferenceFailed) -> None:
        rid = _require(e.result_id, "result_id")
        if isinstance(e, InferenceCompleted):
            sd = parse_study_date(e.study_date)
            self._patient_study(e, None, sd)
            for uid in e.series_instance_uids:
                self.series.append((uid, e.study_instance_uid, None, None, None, None))
            outputs = {
                "measurements": [m.to_avro() for m in e.measurements],
                "detections": [d.to_avro() for d in e.detections],
            }
            self.results.append((
                rid, e.event_id, e.request_id, e.producer, e.patient_key, e.study_instance_uid, e.accession_number,
                e.pipeline, e.pipeline_version, e.model_name, e.model_version, e.shadow, e.replay_id, "completed",
                None, None, None, None, list(e.series_instance_uids), _jsonb(outputs), e.seg_uri, e.sr_uri,
                e.blinding_hash, _jsonb(e.timings_ms), sd, e.started_at, e.occurred_at, e.last_received_at,
            ))
            seen: set[tuple[str, str]] = set()
            for m in e.measurements:
                if (m.name, m.label) in seen:
                    raise ValueError(f"measurement {m.name}/{m.label} given twice")
                seen.add((m.name, m.label))
                self.measurements.append((rid, m.name, m.label, m.value, m.unit, e.event_id))
            for i, d in enumerate(e.detections):
                self.detections.append((rid, i, d.label, d.finding, d.score, list(d.box), d.sop_instance_uid,
                                        e.event_id))
        else:
            self._patient_study(e, None, None)
            self.results.append((
                rid, e.event_id, e.request_id, e.producer, e.patient_key, e.study_instance_uid, e.accession_number,
                e.pipeline, e.pipeline_version, e.model_name, e.model_version, e.shadow, e.replay_id, "failed",
                e.stage, e.reason, e.retriable, e.attempts, [], _EMPTY_JSONB, None, None, None, _EMPTY_JSONB, None,
                None, e.occurred_at, e.last_received_at,
            ))


_UPDATABLE = [c for c in RESULT_COLS if c != "result_id"]

MERGE_SQL = (
    """INSERT INTO patients (patient_key, first_seen_at, last_seen_at)
       SELECT patient_key, min(first_seen_at), max(last_seen_at) FROM s_patients
       GROUP BY patient_key ORDER BY patient_key
       ON CONFLICT (patient_key) DO UPDATE SET
           first_seen_at = LEAST(patients.first_seen_at, EXCLUDED.first_seen_at),
           last_seen_at = GREATEST(patients.last_seen_at, EXCLUDED.last_seen_at)
       WHERE EXCLUDED.first_seen_at < patients.first_seen_at OR EXCLUDED.last_seen_at > patients.last_seen_at""",
    """INSERT INTO studies (study_instance_uid, patient_key, accession_number, study_date, first_received_at,
                            last_received_at)
       SELECT study_instance_uid, min(patient_key), max(accession_number), max(study_date), min(first_received_at),
              max(last_received_at)
       FROM s_studies GROUP BY study_instance_uid ORDER BY study_instance_uid
       ON CONFLICT (study_instance_uid) DO UPDATE SET
           accession_number = COALESCE(studies.accession_number, EXCLUDED.accession_number),
           study_date = COALESCE(EXCLUDED.study_date, studies.study_date),
           first_received_at = LEAST(studies.first_received_at, EXCLUDED.first_received_at),
           last_received_at = GREATEST(studies.last_received_at, EXCLUDED.last_received_at),
           updated_at = now()
       WHERE (studies.accession_number IS NULL AND EXCLUDED.accession_number IS NOT NULL)
          OR (EXCLUDED.study_date IS NOT NULL AND EXCLUDED.study_date IS DISTINCT FROM studies.study_date)
          OR (EXCLUDED.first_received_at IS NOT NULL
              AND (studies.first_received_at IS NULL OR EXCLUDED.first_received_at < studies.first_received_at))
          OR EXCLUDED.last_received_at > studies.last_received_at""",
    """INSERT INTO series (series_instance_uid, study_instance_uid, revision, modality, series_description,
                           instance_count)
       SELECT DISTINCT ON (series_instance_uid) series_instance_uid, study_instance_uid, revision, modality,
              series_description, instance_count
       FROM s_series ORDER BY series_instance_uid, revision DESC NULLS LAST
       ON CONFLICT (series_instance_uid) DO UPDATE SET
           revision = EXCLUDED.revision, modality = COALESCE(EXCLUDED.modality, series.modality),
           series_description = COALESCE(EXCLUDED.series_description, series.series_description),
           instance_count = EXCLUDED.instance_count, updated_at = now()
       WHERE EXCLUDED.revision IS NOT NULL AND (series.revision IS NULL OR EXCLUDED.revision > series.revision)""",
    f"""INSERT INTO requests ({", ".join(REQUEST_COLS)})
       SELECT DISTINCT ON (request_id) {", ".join(REQUEST_COLS)} FROM s_requests ORDER BY request_id
       ON CONFLICT (request_id) DO NOTHING""",
    f"""WITH up AS (
           INSERT INTO results ({", ".join(RESULT_COLS)})
           SELECT DISTINCT ON (result_id) {", ".join(RESULT_COLS)} FROM s_results
           ORDER BY result_id, (status = 'completed') DESC, finished_at DESC
           ON CONFLICT (result_id) DO UPDATE SET
               {", ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATABLE)},
               stored_at = CASE WHEN results.status <> EXCLUDED.status THEN now() ELSE results.stored_at END,
               updated_at = now()
           WHERE results.event_id <> EXCLUDED.event_id
             AND ((results.status = 'failed' AND EXCLUDED.status = 'completed')
                  OR (results.status = EXCLUDED.status AND EXCLUDED.finished_at >= results.finished_at))
           RETURNING result_id, event_id, xmax <> 0 AS was_update
       )
       INSERT INTO s_touched_results SELECT * FROM up""",
    """DELETE FROM measurements m USING s_touched_results t WHERE t.was_update AND m.result_id = t.result_id""",
    """DELETE FROM detections d USING s_touched_results t WHERE t.was_update AND d.result_id = t.result_id""",
    """INSERT INTO measurements (result_id, name, label, value, unit)
       SELECT DISTINCT ON (s.result_id, s.name, s.label) s.result_id, s.name, s.label, s.value, s.unit
       FROM s_measurements s JOIN s_touched_results t ON t.result_id = s.result_id AND t.event_id = s.event_id
       ORDER BY s.result_id, s.name, s.label
       ON CONFLICT DO NOTHING""",
    """INSERT INTO detections (result_id, idx, label, finding, score, box, sop_instance_uid)
       SELECT DISTINCT ON (s.result_id, s.idx) s.result_id, s.idx, s.label, s.finding, s.score, s.box,
              s.sop_instance_uid
       FROM s_detections s JOIN s_touched_results t ON t.result_id = s.result_id AND t.event_id = s.event_id
       ORDER BY s.result_id, s.idx
       ON CONFLICT DO NOTHING""",
    """INSERT INTO blinding_map (blinding_hash, source, result_id, seg_uri)
       SELECT DISTINCT ON (r.blinding_hash) r.blinding_hash, 'model:' || r.model_name || '/' || r.model_version,
              r.result_id, r.seg_uri
       FROM s_results r JOIN s_touched_results t ON t.result_id = r.result_id AND t.event_id = r.event_id
       WHERE r.blinding_hash IS NOT NULL
       ORDER BY r.blinding_hash
       ON CONFLICT (blinding_hash) DO NOTHING""",
)


MERGE_SOURCE_INSTANCES = f"""
    INSERT INTO source_instances ({", ".join(SOURCE_INSTANCE_COLS)})
    SELECT DISTINCT ON (sop_instance_uid) {", ".join(SOURCE_INSTANCE_COLS)} FROM s_source_instances
    ORDER BY sop_instance_uid, received_at DESC
    ON CONFLICT (sop_instance_uid) DO UPDATE SET store_uri = EXCLUDED.store_uri,
        instance_number = EXCLUDED.instance_number, position_along_normal = EXCLUDED.position_along_normal"""


# all merges in one simple-protocol query: one round trip instead of one per statement (no parameters)
_MERGE_ALL = ";\n".join(MERGE_SQL).encode("utf-8")
_MERGE_ALL_AND_SOURCES = ";\n".join((*MERGE_SQL, MERGE_SOURCE_INSTANCES)).encode("utf-8")


def write_result_rows(conn: psycopg.Connection[Any], rows: ResultRows) -> None:
    """Merge one batch in one transaction (``conn`` in autocommit mode)."""
    ensure_stages(conn, STAGES)
    with conn.transaction(), conn.cursor() as cur:
        copy_rows(cur, "s_patients", PATIENT_COLS, rows.patients)
        copy_rows(cur, "s_studies", STUDY_COLS, rows.studies)
        if rows.series:
            copy_rows(cur, "s_series", SERIES_COLS, rows.series)
        if rows.requests:
            copy_rows(cur, "s_requests", REQUEST_COLS, rows.requests)
        if rows.source_instances:
            copy_rows(cur, "s_source_instances", SOURCE_INSTANCE_COLS, rows.source_instances)
        if rows.results:
            copy_rows(cur, "s_results", RESULT_COLS, rows.results)
        if rows.measurements:
            copy_rows(cur, "s_measurements", MEASUREMENT_COLS, rows.measurements)
        if rows.detections:
            copy_rows(cur, "s_detections", DETECTION_COLS, rows.detections)
        cur.execute(_MERGE_ALL_AND_SOURCES if rows.source_instances else _MERGE_ALL)
