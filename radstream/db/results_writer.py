"""Write inference requests and results (InferenceRequested / InferenceCompleted / InferenceFailed).

Idempotent by construction: requests are keyed by ``request_id``, results by ``result_id``;
a duplicate event (same ``event_id``) changes nothing, a completed result is never replaced
by a failure of the same id, and measurements/detections always follow the winning event.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, time
from json.encoder import encode_basestring_ascii as _encode_string
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from radstream.db.array_dumpers import use_flat_array_dumpers
from radstream.db.new_keys import CONFLICT_ERRORS, existing_keys
from radstream.db.staging import copy_rows, ensure_stages, prepare_copies
from radstream.events.models import (
    Detection,
    Event,
    InferenceCompleted,
    InferenceFailed,
    InferenceRequested,
    Measurement,
)

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

PATIENT_COLS = ("patient_key",)  # written once (migration 0010); v_patients has the times
STUDY_COLS = ("study_instance_uid", "patient_key", "accession_number", "study_date", "first_received_at",
              "last_received_at", "study_time", "study_description", "institution_name", "station_name",
              "referring_physician_name")
_STUDY_TEXT = range(6, len(STUDY_COLS))  # identity columns: max() within a batch, a stored value is kept
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
               "finished_at", "last_received_at", "study_time", "modality")
MEASUREMENT_COLS = ("result_id", "name", "label", "value", "unit", "event_id")
DETECTION_COLS = ("result_id", "idx", "label", "finding", "score", "box", "sop_instance_uid", "event_id")


@functools.lru_cache(maxsize=4096)
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


@functools.lru_cache(maxsize=4096)
def parse_study_time(value: str | None) -> time | None:
    """DICOM TM (HH, HHMM, HHMMSS, HHMMSS.FFFFFF; also the old HH:MM:SS) -> time; anything else -> None."""
    if not value:
        return None
    whole, _, fraction = value.strip().replace(":", "").partition(".")
    if len(whole) not in (2, 4, 6) or not whole.isdigit() or (fraction and not fraction.isdigit()):
        return None
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return time(hh, mm, min(ss, 59), micro)


def _as_is(text: str) -> str:
    return text


def _jsonb(value: Any) -> Jsonb:
    """JSON serialised now (while the rows are built), not by the COPY on the writer's critical path."""
    return Jsonb(json.dumps(value), dumps=_as_is)


def _jsonb_text(text: str) -> Jsonb:
    return Jsonb(text, dumps=_as_is)


def _number(value: float) -> str:
    """A JSON number as json.dumps writes it (NaN/Infinity too, which PostgreSQL then refuses)."""
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value)


def _string(value: str | None) -> str:
    return "null" if value is None else _encode_string(value)


def outputs_json(measurements: list[Measurement], detections: list[Detection]) -> str:
    """``{"measurements": [...], "detections": [...]}`` as the events' Avro records, without building dicts."""
    ms = ", ".join([
        f'{{"name": {_encode_string(m.name)}, "label": {_encode_string(m.label)}, "value": {_number(m.value)}, '
        f'"unit": {_encode_string(m.unit)}}}'
        for m in measurements])
    ds = ", ".join([
        f'{{"label": {_encode_string(d.label)}, "finding": {_encode_string(d.finding)}, "score": {_number(d.score)}, '
        f'"box": [{", ".join([_number(v) for v in d.box])}], "sop_instance_uid": {_string(d.sop_instance_uid)}}}'
        for d in detections])
    return f'{{"measurements": [{ms}], "detections": [{ds}]}}'


def timings_json(timings: dict[str, float]) -> str:
    return "{" + ", ".join([f"{_encode_string(k)}: {_number(v)}" for k, v in timings.items()]) + "}"


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
    # each table's rows reduced to one per key as they are added (as the merge statements reduce
    # them), so that seal() only sorts: patients, studies, series, requests, results, sources
    _one: tuple[dict[str, tuple[Any, ...]], ...] = field(default_factory=lambda: ({}, {}, {}, {}, {}, {}),
                                                         repr=False)
    # (result_id, event_id) -> that event's measurement and detection rows (the winner's are written)
    _own: dict[tuple[str, str], tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = field(
        default_factory=dict, repr=False)
    _plan: WritePlan | None = field(default=None, repr=False)

    def add(self, event: Event) -> None:
        """Add the rows of one event (raises ValueError/TypeError for an event that cannot be stored)."""
        self._plan = None
        if isinstance(event, InferenceRequested):
            self._request(event)
        elif isinstance(event, InferenceCompleted | InferenceFailed):
            self._result(event)
        else:
            raise TypeError(f"the results sink does not take {type(event).__name__} events")

    def count(self) -> int:
        return sum(len(x) for x in (self.patients, self.studies, self.series, self.requests, self.results,
                                    self.measurements, self.detections))

    def seal(self) -> WritePlan:
        """The batch's rows as the writer COPYs them (one per key, in key order), worked out once.

        The sink calls this on its consumer thread before handing the batch to its writer
        thread, so this pure-Python work overlaps the previous batch's database writes
        instead of leaving the database waiting for it. Adding rows afterwards discards it.
        """
        if self._plan is None:
            self._plan = WritePlan.of(self)
        return self._plan

    def _patient_study(self, e: InferenceRequested | InferenceCompleted | InferenceFailed,
                       first: datetime | None, study_date: date | None) -> None:
        pk = _require(e.patient_key, "patient_key")
        study = _require(e.study_instance_uid, "study_instance_uid")
        self._patient((pk,))
        self._study(_study_row(e, study, pk, study_date, first))

    def _patient(self, row: tuple[Any, ...]) -> None:
        self.patients.append(row)
        self._one[0][row[0]] = row

    def _study(self, row: tuple[Any, ...]) -> None:
        self.studies.append(row)
        one = self._one[1]
        had = one.get(row[0])
        one[row[0]] = row if had is None else (
            row[0], _least(had[1], row[1]), _greatest(had[2], row[2]), _greatest(had[3], row[3]),
            _least(had[4], row[4]), _greatest(had[5], row[5]),
            *[_greatest(had[i], row[i]) for i in _STUDY_TEXT])

    def _series(self, row: tuple[Any, ...]) -> None:
        """Highest revision wins, NULLs last."""
        self.series.append(row)
        one = self._one[2]
        had = one.get(row[0])
        if had is None or (row[2] is not None and (had[2] is None or row[2] > had[2])):
            one[row[0]] = row

    def _result_row(self, row: tuple[Any, ...]) -> None:
        """A completed result over a failed one, then the latest."""
        self.results.append(row)
        one = self._one[4]
        had = one.get(row[0])
        if had is None or ((row[_R_STATUS] == "completed", row[_R_FINISHED])
                           > (had[_R_STATUS] == "completed", had[_R_FINISHED])):
            one[row[0]] = row

    def _request(self, e: InferenceRequested) -> None:
        sd = parse_study_date(e.study_date)
        received = [i.received_at for s in e.series for i in s.instances]
        self._patient_study(e, min(received) if received else None, sd)
        sources = self._one[5]
        for s in e.series:
            self._series((_require(s.series_instance_uid, "series_instance_uid"), e.study_instance_uid,
                          s.revision, s.modality, s.series_description, len(s.instances)))
            for i in s.instances:  # latest received wins (ORDER BY received_at DESC: NULLs first)
                row = (i.sop_instance_uid, s.series_instance_uid, e.study_instance_uid, i.sop_class_uid,
                       i.store_uri, i.instance_number, i.position_along_normal, i.received_at)
                self.source_instances.append(row)
                had = sources.get(row[0])
                if had is None or (had[_S_RECEIVED] is not None and (
                        row[_S_RECEIVED] is None or row[_S_RECEIVED] > had[_S_RECEIVED])):
                    sources[row[0]] = row
        request = (
            _require(e.request_id, "request_id"), e.event_id, e.patient_key, e.study_instance_uid,
            e.accession_number, e.pipeline, e.pipeline_version, e.model_name, e.model_version, e.shadow,
            e.replay_id, str(e.trigger), len(e.series), sum(len(s.instances) for s in e.series), sd,
            e.last_received_at, e.occurred_at,
        )
        self.requests.append(request)
        self._one[3].setdefault(request[0], request)

    def _result(self, e: InferenceCompleted | InferenceFailed) -> None:
        rid = _require(e.result_id, "result_id")
        if isinstance(e, InferenceCompleted):
            event_id = e.event_id
            pk = _require(e.patient_key, "patient_key")
            study = _require(e.study_instance_uid, "study_instance_uid")
            measurements = [(rid, m.name, m.label, m.value, m.unit, event_id) for m in e.measurements]
            if len({(m[1], m[2]) for m in measurements}) != len(measurements):
                seen: set[tuple[str, str]] = set()
                for m in measurements:
                    if (m[1], m[2]) in seen:
                        raise ValueError(f"measurement {m[1]}/{m[2]} given twice")
                    seen.add((m[1], m[2]))
            sd = parse_study_date(e.study_date)
            last = e.last_received_at
            self._patient((pk,))
            self._study(_study_row(e, study, pk, sd, None))
            series = self._one[2]
            for uid in e.series_instance_uids:  # no revision: never replaces a row
                row = (uid, study, None, None, None, None)
                self.series.append(row)
                series.setdefault(uid, row)
            self._result_row((
                rid, event_id, e.request_id, e.producer, pk, study, e.accession_number,
                e.pipeline, e.pipeline_version, e.model_name, e.model_version, e.shadow, e.replay_id, "completed",
                None, None, None, None, list(e.series_instance_uids),
                _jsonb_text(outputs_json(e.measurements, e.detections)), e.seg_uri, e.sr_uri,
                e.blinding_hash, _jsonb_text(timings_json(e.timings_ms)), sd, e.started_at, e.occurred_at, last,
                parse_study_time(e.study_time), e.modality,
            ))
            detections = [(rid, i, d.label, d.finding, d.score, list(d.box), d.sop_instance_uid, event_id)
                          for i, d in enumerate(e.detections)]
            self.measurements.extend(measurements)
            self.detections.extend(detections)
            self._own.setdefault((rid, event_id), (measurements, detections))  # a re-delivery is the same
        else:
            sd = parse_study_date(e.study_date)
            self._patient_study(e, None, sd)
            self._result_row((
                rid, e.event_id, e.request_id, e.producer, e.patient_key, e.study_instance_uid, e.accession_number,
                e.pipeline, e.pipeline_version, e.model_name, e.model_version, e.shadow, e.replay_id, "failed",
                e.stage, e.reason, e.retriable, e.attempts, [], _EMPTY_JSONB, None, None, None, _EMPTY_JSONB, sd,
                None, e.occurred_at, e.last_received_at, parse_study_time(e.study_time), e.modality,
            ))


def _study_row(e: InferenceRequested | InferenceCompleted | InferenceFailed, study: str, patient: str,
               study_date: date | None, first: datetime | None) -> tuple[Any, ...]:
    """A ``studies`` row (STUDY_COLS) from any result event: the study's identity as the event carries it."""
    return (study, patient, e.accession_number, study_date, first, e.last_received_at,
            parse_study_time(e.study_time), e.study_description, e.institution_name, e.station_name,
            e.referring_physician_name)


_UPDATABLE = [c for c in RESULT_COLS if c != "result_id"]

MERGE_SQL = (
    """INSERT INTO patients (patient_key)
       SELECT DISTINCT patient_key FROM s_patients ORDER BY patient_key
       ON CONFLICT (patient_key) DO NOTHING""",
    f"""INSERT INTO studies ({", ".join(STUDY_COLS)})
       SELECT study_instance_uid, min(patient_key), max(accession_number), max(study_date), min(first_received_at),
              max(last_received_at), {", ".join(f"max({c})" for c in STUDY_COLS[6:])}
       FROM s_studies GROUP BY study_instance_uid ORDER BY study_instance_uid
       ON CONFLICT (study_instance_uid) DO UPDATE SET
           accession_number = COALESCE(studies.accession_number, EXCLUDED.accession_number),
           study_date = COALESCE(EXCLUDED.study_date, studies.study_date),
           first_received_at = LEAST(studies.first_received_at, EXCLUDED.first_received_at),
           last_received_at = GREATEST(studies.last_received_at, EXCLUDED.last_received_at),
           {", ".join(f"{c} = COALESCE(studies.{c}, EXCLUDED.{c})" for c in STUDY_COLS[6:])},
           updated_at = now()
       WHERE (studies.accession_number IS NULL AND EXCLUDED.accession_number IS NOT NULL)
          OR (EXCLUDED.study_date IS NOT NULL AND EXCLUDED.study_date IS DISTINCT FROM studies.study_date)
          {" ".join(f"OR (studies.{c} IS NULL AND EXCLUDED.{c} IS NOT NULL)" for c in STUDY_COLS[6:])}
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


# -- the direct path: new keys COPYed straight into their tables -------------------------------

_R_STATUS = RESULT_COLS.index("status")
_R_FINISHED = RESULT_COLS.index("finished_at")
_R_EVENT = RESULT_COLS.index("event_id")
_R_HASH = RESULT_COLS.index("blinding_hash")
_R_MODEL = RESULT_COLS.index("model_name")
_R_MODEL_VERSION = RESULT_COLS.index("model_version")
_R_SEG = RESULT_COLS.index("seg_uri")
_S_RECEIVED = SOURCE_INSTANCE_COLS.index("received_at")
_STORED_MEASUREMENT_COLS = MEASUREMENT_COLS[:-1]  # without the staging-only event_id
_STORED_DETECTION_COLS = DETECTION_COLS[:-1]

_BLINDING_SQL = b"""INSERT INTO blinding_map (blinding_hash, source, result_id, seg_uri)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
    ON CONFLICT (blinding_hash) DO NOTHING"""

_MERGES: dict[tuple[bool, ...], bytes] = {}


def _merge_sql(patients: bool, studies: bool, series: bool, requests: bool, results: bool,
               sources: bool) -> bytes:
    """The merge statements for the staging tables that hold rows, as one simple query."""
    key = (patients, studies, series, requests, results, sources)
    hit = _MERGES.get(key)
    if hit is None:
        chosen = [stmt for on, stmt in zip((patients, studies, series, requests), MERGE_SQL[:4], strict=True) if on]
        if results:
            chosen.extend(MERGE_SQL[4:])
        if sources:
            chosen.append(MERGE_SOURCE_INSTANCES)
        hit = ";\n".join(chosen).encode("utf-8")
        _MERGES[key] = hit
    return hit


def _least(a: Any, b: Any) -> Any:
    """SQL min(): NULLs ignored."""
    return b if a is None else a if b is None or a <= b else b


def _greatest(a: Any, b: Any) -> Any:
    """SQL max(): NULLs ignored."""
    return b if a is None else a if b is None or a >= b else b


def _in_key_order(rows: dict[str, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows sorted by key (concurrent writers lock keys in one order)."""
    return [rows[k] for k in sorted(rows)]


def _keys(rows: list[tuple[Any, ...]]) -> list[str]:
    return [r[0] for r in rows]


def _copy(cur: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    if rows:
        copy_rows(cur, table, columns, rows)


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What the direct path COPYs for one batch, assuming every key is new: each table's rows
    reduced to one per key (as the merge statements reduce them) and sorted by key (concurrent
    writers lock keys in one order); the measurements and detections of the winning result
    events, sorted by their keys; blinding entries of the winning results. Rows whose keys turn
    out to be stored are filtered out of these lists (and merged) when the batch is written."""

    ordered: tuple[list[tuple[Any, ...]], ...]  # patients, studies, series, requests, results, sources
    measurements: list[tuple[Any, ...]]  # stored measurement columns
    detections: list[tuple[Any, ...]]  # stored detection columns
    blinding: list[tuple[Any, ...]]  # (blinding_hash, source, result_id, seg_uri), by result id

    @classmethod
    def of(cls, rows: ResultRows) -> WritePlan:
        ordered = tuple(_in_key_order(k) for k in rows._one)
        measurements: list[tuple[Any, ...]] = []
        detections: list[tuple[Any, ...]] = []
        for r in ordered[4]:  # by result id; a failed result has none
            own = rows._own.get((r[0], r[_R_EVENT]))
            if own is not None:
                # a result's measurement keys (name, label) are unique, so sorting the rows sorts the
                # keys; its detections come in index order
                measurements.extend(sorted([m[:5] for m in own[0]]))
                detections.extend([d[:7] for d in own[1]])
        blinding = [(r[_R_HASH], f"model:{r[_R_MODEL]}/{r[_R_MODEL_VERSION]}", r[0], r[_R_SEG])
                    for r in ordered[4] if r[_R_HASH] is not None]
        return cls(ordered, measurements, detections, blinding)


def _unstored(rows: list[tuple[Any, ...]], stored: set[str]) -> list[tuple[Any, ...]]:
    """``rows`` (keyed by their first column) without those whose key is stored, order kept."""
    return [r for r in rows if r[0] not in stored] if stored else rows


_PARENTS = (("patients", PATIENT_COLS, "s_patients", "patient_key"),
            ("studies", STUDY_COLS, "s_studies", "study_instance_uid"),
            ("series", SERIES_COLS, "s_series", "series_instance_uid"))
_PARENT_MERGES = tuple(stmt.encode("utf-8") for stmt in MERGE_SQL[:3])


def write_parents_split(cur: psycopg.Cursor[Any], rows: ResultRows, plan: WritePlan) -> None:
    """Patients, studies and series, in their own transaction, each table in one pass in key order.

    These rows are shared: a patient's results (keyed by study) and requests (keyed by patient)
    reach different partitions, so several sink processes write the same parent rows at once.
    Each table is written in a single pass in key order (all COPYed when all its keys are new,
    else all merged, which sorts them), patients, then studies, then series: concurrent writers
    lock the same rows in the same order, so they wait for each other instead of deadlocking.
    A patient row is never updated (only its key is stored), so only new patients are written.
    The batch's own rows, written after this commits, take only key-share locks on them.
    """
    raw = (rows.patients, rows.studies, rows.series)
    stored = existing_keys(cur, {table: (key, _keys(plan.ordered[i])) for i, (table, _, _, key) in enumerate(_PARENTS)})
    for i, (table, cols, stage, _) in enumerate(_PARENTS):
        if not raw[i]:
            continue
        if table == "patients":
            _copy(cur, table, cols, _unstored(plan.ordered[i], stored[table]))
        elif not stored[table]:
            _copy(cur, table, cols, plan.ordered[i])
        else:
            _copy(cur, stage, cols, raw[i])
            cur.execute(_PARENT_MERGES[i])


def write_own_split(cur: psycopg.Cursor[Any], rows: ResultRows, plan: WritePlan) -> None:
    """Requests, results (with measurements, detections, blinding) and source instances: new
    keys COPYed, existing ones merged (one transaction, after the parents')."""
    stored = existing_keys(cur, {
        "requests": ("request_id", _keys(plan.ordered[3])), "results": ("result_id", _keys(plan.ordered[4])),
        "source_instances": ("sop_instance_uid", _keys(plan.ordered[5])),
    })
    _copy(cur, "requests", REQUEST_COLS, _unstored(plan.ordered[3], stored["requests"]))
    old_r = stored["results"]
    new_results = _unstored(plan.ordered[4], old_r)
    _copy(cur, "results", RESULT_COLS, new_results)
    if new_results:
        _copy(cur, "measurements", _STORED_MEASUREMENT_COLS, _unstored(plan.measurements, old_r))
        _copy(cur, "detections", _STORED_DETECTION_COLS, _unstored(plan.detections, old_r))
        blinding = {b[0]: b for b in plan.blinding if b[2] not in old_r}
        if blinding:
            cur.execute(_BLINDING_SQL, [list(col) for col in zip(*(blinding[k] for k in sorted(blinding)),
                                                                 strict=True)])
    _copy(cur, "source_instances", SOURCE_INSTANCE_COLS, _unstored(plan.ordered[5], stored["source_instances"]))

    # rows whose keys exist: staged as they came, merged as before
    old_q, old_s = stored["requests"], stored["source_instances"]
    if not (old_q or old_r or old_s):
        return
    if old_q:
        _copy(cur, "s_requests", REQUEST_COLS, [r for r in rows.requests if r[0] in old_q])
    if old_r:
        _copy(cur, "s_results", RESULT_COLS, [r for r in rows.results if r[0] in old_r])
        _copy(cur, "s_measurements", MEASUREMENT_COLS, [r for r in rows.measurements if r[0] in old_r])
        _copy(cur, "s_detections", DETECTION_COLS, [r for r in rows.detections if r[0] in old_r])
    if old_s:
        _copy(cur, "s_source_instances", SOURCE_INSTANCE_COLS,
              [r for r in rows.source_instances if r[0] in old_s])
    cur.execute(_merge_sql(False, False, False, bool(old_q), bool(old_r), bool(old_s)))


def merge_parents(cur: psycopg.Cursor[Any], rows: ResultRows) -> None:
    """Patients, studies and series staged and merged with ON CONFLICT (any key may exist)."""
    _copy(cur, "s_patients", PATIENT_COLS, rows.patients)
    _copy(cur, "s_studies", STUDY_COLS, rows.studies)
    _copy(cur, "s_series", SERIES_COLS, rows.series)
    if rows.patients or rows.studies or rows.series:
        cur.execute(_merge_sql(bool(rows.patients), bool(rows.studies), bool(rows.series), False, False, False))


def merge_own(cur: psycopg.Cursor[Any], rows: ResultRows) -> None:
    """Requests, results and source instances staged and merged with ON CONFLICT."""
    _copy(cur, "s_requests", REQUEST_COLS, rows.requests)
    _copy(cur, "s_source_instances", SOURCE_INSTANCE_COLS, rows.source_instances)
    _copy(cur, "s_results", RESULT_COLS, rows.results)
    _copy(cur, "s_measurements", MEASUREMENT_COLS, rows.measurements)
    _copy(cur, "s_detections", DETECTION_COLS, rows.detections)
    if rows.requests or rows.results or rows.source_instances:
        cur.execute(_merge_sql(False, False, False, bool(rows.requests), bool(rows.results),
                               bool(rows.source_instances)))


_COPIES = (
    ("patients", PATIENT_COLS), ("studies", STUDY_COLS), ("series", SERIES_COLS), ("requests", REQUEST_COLS),
    ("results", RESULT_COLS), ("measurements", _STORED_MEASUREMENT_COLS), ("detections", _STORED_DETECTION_COLS),
    ("source_instances", SOURCE_INSTANCE_COLS), ("s_patients", PATIENT_COLS), ("s_studies", STUDY_COLS),
    ("s_series", SERIES_COLS), ("s_requests", REQUEST_COLS), ("s_results", RESULT_COLS),
    ("s_measurements", MEASUREMENT_COLS), ("s_detections", DETECTION_COLS),
    ("s_source_instances", SOURCE_INSTANCE_COLS),
)


def prepare_connection(conn: psycopg.Connection[Any]) -> None:
    """Set up a new connection for :func:`write_result_rows` (staging tables, COPY column types,
    array dumpers) before the first batch, which then finds it done."""
    prepare_copies(conn, STAGES, _COPIES)
    use_flat_array_dumpers(conn)


def merge_result_rows(conn: psycopg.Connection[Any], rows: ResultRows) -> None:
    """The general path: every row staged and merged with ON CONFLICT (parents, then the rest)."""
    ensure_stages(conn, STAGES)
    use_flat_array_dumpers(conn)
    with conn.transaction(), conn.cursor() as cur:
        merge_parents(cur, rows)
    with conn.transaction(), conn.cursor() as cur:
        merge_own(cur, rows)


def write_result_rows(conn: psycopg.Connection[Any], rows: ResultRows) -> str:
    """Write one batch (``conn`` in autocommit mode), idempotently, in two transactions: the
    shared parent rows (patients, studies, series), then the batch's own rows.

    In each, rows whose keys are new (the common case) are COPYed straight into their tables
    and rows whose keys exist are merged through the staging tables. If another writer stores
    one of the "new" keys meanwhile, the COPY fails, that transaction rolls back, and its rows
    are merged instead: the outcome is the same either way. Returns ``"split"`` if both went
    the direct way, ``"merged"`` if either was merged. A failure after the parents committed
    leaves only rows that a retry writes again unchanged.
    """
    ensure_stages(conn, STAGES)
    use_flat_array_dumpers(conn)
    plan = rows.seal()
    how = "split"
    for split, merge in ((write_parents_split, merge_parents), (write_own_split, merge_own)):
        try:
            with conn.transaction(), conn.cursor() as cur:
                split(cur, rows, plan)
        except CONFLICT_ERRORS:
            with conn.transaction(), conn.cursor() as cur:
                merge(cur, rows)
            how = "merged"
    return how
