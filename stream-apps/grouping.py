"""Grouping of instances into series and studies: a pure state machine per patient key.

No Kafka here. Time comes from the caller (``now``, seconds since the epoch), so tests drive
it with a fake clock and the worker with ``time.time``. The rules:

- an instance is deduplicated by SOP Instance UID (within the patient);
- a series is identified by (Study Instance UID, Series Instance UID), so one Series Instance
  UID that turns up under two studies is completed once per study;
- a series closes after its quiet period (no instance for ``series_quiet_s``) or when it has
  been open for ``max_age_s`` (``MAX_AGE``);
- the patient's open studies close after the patient-level quiet period (no instance for the
  patient for ``patient_quiet_s``); series still open then close with ``STUDY_COMPLETE``;
- an instance for a closed series re-opens it; it closes again after the quiet period and is
  re-emitted with ``revision + 1`` and ``LATE_DATA`` (its study likewise);
- quiet periods come from the defaults, the called AE title, and the pipelines that route
  the series (:class:`TimeoutPolicy`);
- instances are ordered for reconstruction: position along the slice normal, then number.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from radstream import __version__
from radstream.events.models import (
    STUDY_IDENTITY_FIELDS,
    CompletionReason,
    Event,
    InstanceReceived,
    InstanceRef,
    SeriesCompleted,
    SeriesSummary,
    StudyCompleted,
    study_identity,
)
from radstream.settings import AggregatorSettings

PRODUCER = f"radstream-aggregator/{__version__}"
_EVENT_NS = uuid.UUID("5f0c2b1e-52a4-4f8e-9d0b-7a61c2d1a9e3")


@dataclass(frozen=True, slots=True)
class Timeouts:
    series_quiet_s: float = 60.0
    patient_quiet_s: float = 60.0
    max_age_s: float = 4 * 3600.0


@dataclass(frozen=True, slots=True)
class PipelineTimeouts:
    """A pipeline's quiet periods (None: not set) and the test of whether it routes a series."""

    name: str
    routes: Callable[[dict[str, Any]], bool]  # DICOM keyword -> value of the series' attributes
    series_quiet_s: float | None = None
    patient_quiet_s: float | None = None
    max_age_s: float | None = None


class TimeoutPolicy:
    """Quiet periods: the defaults, per called AE title, and per pipeline routing the series.

    A pipeline's values take precedence over the AE title's; where several pipelines route a
    series, each value is the longest among them, so no pipeline gets the series early.
    """

    _CACHE_MAX = 10000

    def __init__(self, default: Timeouts, overrides: dict[str, Timeouts] | None = None,
                 retain_closed_s: float = 24 * 3600.0, pipelines: Sequence[PipelineTimeouts] = ()) -> None:
        self.default = default
        self.overrides = {k.strip().upper(): v for k, v in (overrides or {}).items()}
        self.retain_closed_s = retain_closed_s
        self.pipelines = list(pipelines)
        self._by_series: dict[tuple[Any, ...], Timeouts] = {}

    def for_ae(self, called_ae_title: str | None) -> Timeouts:
        if called_ae_title:
            return self.overrides.get(called_ae_title.strip().upper(), self.default)
        return self.default

    def for_series(self, s: SeriesState) -> Timeouts:
        base = self.for_ae(s.called_ae_title)
        if not self.pipelines:
            return base
        key = (s.called_ae_title, s.calling_ae_title, s.modality, s.body_part_examined, s.series_description,
               s.series_number, s.station_name, s.slice_thickness, s.accession_number,
               tuple(s.image_orientation_patient or ()))
        hit = self._by_series.get(key)
        if hit is None:
            attrs = {k: v for k, v in (
                ("CalledAETitle", s.called_ae_title), ("CallingAETitle", s.calling_ae_title),
                ("Modality", s.modality), ("BodyPartExamined", s.body_part_examined),
                ("SeriesDescription", s.series_description), ("SeriesNumber", s.series_number),
                ("StationName", s.station_name), ("SliceThickness", s.slice_thickness),
                ("ImageOrientationPatient", s.image_orientation_patient),
                ("AccessionNumber", s.accession_number), ("StudyInstanceUID", s.study_uid),
                ("SeriesInstanceUID", s.series_uid)) if v is not None}
            matched = [p for p in self.pipelines if p.routes(attrs)]
            hit = base if not matched else Timeouts(
                max(p.series_quiet_s or base.series_quiet_s for p in matched),
                # a pipeline that sets only the series' quiet period must not see its study close first
                max(p.patient_quiet_s or max(base.patient_quiet_s, p.series_quiet_s or 0.0) for p in matched),
                max(p.max_age_s or base.max_age_s for p in matched))
            if len(self._by_series) >= self._CACHE_MAX:
                self._by_series.clear()
            self._by_series[key] = hit
        return hit

    def for_study(self, p: PatientState, st: StudyState) -> Timeouts:
        """The study's patient-level quiet period and maximum age: the longest of its series'."""
        base = self.for_ae(st.called_ae_title)
        if not self.pipelines or not st.series_keys:
            return base
        each = [self.for_series(p.series[sk]) for sk in st.series_keys if sk in p.series]
        if not each:
            return base
        return Timeouts(base.series_quiet_s, max(t.patient_quiet_s for t in each), max(t.max_age_s for t in each))

    @classmethod
    def from_settings(cls, s: AggregatorSettings, pipelines: Sequence[PipelineTimeouts] = ()) -> TimeoutPolicy:
        default = Timeouts(s.series_quiet_s, s.patient_quiet_s, s.max_age_s)
        overrides = {
            ae: Timeouts(
                o.series_quiet_s if o.series_quiet_s is not None else default.series_quiet_s,
                o.patient_quiet_s if o.patient_quiet_s is not None else default.patient_quiet_s,
                o.max_age_s if o.max_age_s is not None else default.max_age_s,
            )
            for ae, o in s.overrides.items()
        }
        return cls(default, overrides, s.retain_closed_s, pipelines)


def position_along_normal(ipp: list[float] | None, iop: list[float] | None) -> float | None:
    """dot(ImagePositionPatient, row x column): the slice's position along its normal."""
    if not ipp or not iop or len(ipp) != 3 or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    return float(ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2])


def reconstruction_order(instances: Iterable[InstanceRef]) -> list[InstanceRef]:
    """Sorted by position along the normal, then instance number (missing values last)."""
    def key(i: InstanceRef) -> tuple[bool, float, bool, int, str]:
        pos, num = i.position_along_normal, i.instance_number
        return (pos is None, pos if pos is not None else 0.0, num is None,
                num if num is not None else 0, i.sop_instance_uid)

    return sorted(instances, key=key)


def instance_ref(ev: InstanceReceived) -> InstanceRef:
    """What a completed series lists of one received instance."""
    return InstanceRef(
        sop_instance_uid=ev.sop_instance_uid, sop_class_uid=ev.sop_class_uid, store_uri=ev.store_uri,
        sha256=ev.sha256, byte_size=ev.byte_size, instance_number=ev.instance_number,
        position_along_normal=position_along_normal(ev.image_position_patient, ev.image_orientation_patient),
        received_at=ev.received_at)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(round(t, 3), UTC)


class AddOutcome(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    LATE = "late"  # re-opened a closed series or study


@dataclass(slots=True)
class SeriesState:
    study_uid: str
    series_uid: str
    called_ae_title: str
    calling_ae_title: str
    accession_number: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    image_orientation_patient: list[float] | None = None
    slice_thickness: float | None = None
    station_name: str | None = None
    instances: dict[str, InstanceRef] = field(default_factory=dict)
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    opened_at: float = 0.0
    last_seen: float = 0.0
    revision: int = -1  # last emitted revision; -1: never emitted
    open: bool = True
    late: bool = False
    closed_at: float | None = None
    chunks: int = 0  # changelog chunks of this series' instances written so far
    legacy_instance_keys: bool = False  # restored from one-record-per-instance changelog keys
    # the routing facts of the series' first instance (radstream.pipelines.facts)
    manufacturer: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    ae_pipelines: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StudyState:
    study_uid: str
    called_ae_title: str
    calling_ae_title: str
    accession_number: str | None = None
    study_date: str | None = None
    series_keys: list[tuple[str, str]] = field(default_factory=list)
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    opened_at: float = 0.0
    revision: int = -1
    open: bool = True
    late: bool = False
    closed_at: float | None = None
    # the rest of the study's identity (STUDY_IDENTITY_FIELDS): the first instance that has a value sets it
    study_time: str | None = None
    study_description: str | None = None
    institution_name: str | None = None
    station_name: str | None = None
    referring_physician_name: str | None = None

    def take_identity(self, ev: InstanceReceived) -> None:
        """Fill the study-level attributes this study does not know yet from an instance of it."""
        for name in STUDY_IDENTITY_FIELDS:
            if getattr(self, name) is None:
                value = getattr(ev, name)
                if value is not None:
                    setattr(self, name, value)


@dataclass(slots=True)
class PatientState:
    key: str
    last_seen: float = 0.0
    studies: dict[str, StudyState] = field(default_factory=dict)
    series: dict[tuple[str, str], SeriesState] = field(default_factory=dict)
    sops: dict[str, tuple[str, str]] = field(default_factory=dict)
    # what changed since the owner last persisted this patient
    dirty_series: set[tuple[str, str]] = field(default_factory=set)
    dirty_instances: list[tuple[tuple[str, str], str]] = field(default_factory=list)
    dirty_meta: bool = False

    def index(self) -> None:
        self.sops = {sop: sk for sk, s in self.series.items() for sop in s.instances}


class Aggregator:
    """All patients of one worker (or one partition): add instances, expire deadlines."""

    def __init__(self, policy: TimeoutPolicy, producer: str = PRODUCER) -> None:
        self.policy = policy
        self.producer = producer
        self.patients: dict[str, PatientState] = {}
        # patients dropped (retention over) since the owner last looked, to delete from the changelog
        self.purged: dict[str, PatientState] = {}

    # -- input -----------------------------------------------------------------------------
    def add(self, ev: InstanceReceived, now: float) -> AddOutcome:
        p = self.patients.get(ev.patient_key)
        if p is None:
            p = self.patients[ev.patient_key] = PatientState(ev.patient_key)
            self.purged.pop(ev.patient_key, None)
        if ev.sop_instance_uid in p.sops:
            return AddOutcome.DUPLICATE
        outcome = AddOutcome.NEW
        sk = (ev.study_instance_uid, ev.series_instance_uid)
        study = p.studies.get(ev.study_instance_uid)
        if study is None:
            study = p.studies[ev.study_instance_uid] = StudyState(
                ev.study_instance_uid, ev.called_ae_title, ev.calling_ae_title, ev.accession_number,
                ev.study_date, opened_at=now)
        elif not study.open:
            study.open, study.late, study.opened_at, study.closed_at = True, True, now, None
            outcome = AddOutcome.LATE
        if study.study_date is None or study.study_time is None or study.study_description is None:
            study.take_identity(ev)  # new, or the instances so far lacked some
        s = p.series.get(sk)
        if s is None:
            s = p.series[sk] = SeriesState(
                ev.study_instance_uid, ev.series_instance_uid, ev.called_ae_title, ev.calling_ae_title,
                ev.accession_number, ev.modality, ev.body_part_examined, ev.series_description,
                ev.series_number, ev.image_orientation_patient, ev.slice_thickness, ev.station_name,
                opened_at=now, manufacturer=ev.manufacturer, attributes=ev.attributes, ae_pipelines=ev.ae_pipelines)
            study.series_keys.append(sk)
        elif not s.open:
            s.open, s.late, s.opened_at, s.closed_at = True, True, now, None
            outcome = AddOutcome.LATE
        s.instances[ev.sop_instance_uid] = instance_ref(ev)
        for holder in (s, study):
            if holder.first_received_at is None or ev.received_at < holder.first_received_at:
                holder.first_received_at = ev.received_at
            if holder.last_received_at is None or ev.received_at > holder.last_received_at:
                holder.last_received_at = ev.received_at
        s.last_seen = now
        p.last_seen = now
        p.sops[ev.sop_instance_uid] = sk
        p.dirty_series.add(sk)
        p.dirty_instances.append((sk, ev.sop_instance_uid))
        p.dirty_meta = True
        return outcome

    # -- time ------------------------------------------------------------------------------
    def deadline(self, key: str) -> float | None:
        """When :meth:`expire` next has something to do for this patient (None: nothing)."""
        p = self.patients.get(key)
        if p is None:
            return None
        times: list[float] = []
        for s in p.series.values():
            if s.open:
                t = self.policy.for_series(s)
                times.append(min(s.last_seen + t.series_quiet_s, s.opened_at + t.max_age_s))
        for st in p.studies.values():
            if st.open:
                t = self.policy.for_study(p, st)
                times.append(min(p.last_seen + t.patient_quiet_s, st.opened_at + t.max_age_s))
        if not times:
            return p.last_seen + self.policy.retain_closed_s
        return min(times)

    def overdue_open(self, now: float) -> bool:
        """Whether some open series or study is past its deadline (e.g. found so after a restore)."""
        for key, p in self.patients.items():
            if (any(s.open for s in p.series.values()) or any(st.open for st in p.studies.values())) \
                    and (d := self.deadline(key)) is not None and d <= now:
                return True
        return False

    def due(self, now: float) -> list[str]:
        return [k for k in self.patients if (d := self.deadline(k)) is not None and d <= now]

    def expire(self, key: str, now: float) -> list[Event]:
        """Close what is due for one patient; returns the events to emit, in order."""
        p = self.patients.get(key)
        if p is None:
            return []
        out: list[Event] = []
        for s in p.series.values():
            if not s.open:
                continue
            t = self.policy.for_series(s)
            if now >= s.last_seen + t.series_quiet_s:
                out.append(self._close_series(p, s, now, CompletionReason.QUIET_PERIOD))
            elif now >= s.opened_at + t.max_age_s:
                out.append(self._close_series(p, s, now, CompletionReason.MAX_AGE))
        for st in p.studies.values():
            if not st.open:
                continue
            t = self.policy.for_study(p, st)
            if now >= p.last_seen + t.patient_quiet_s:
                reason = CompletionReason.QUIET_PERIOD
            elif now >= st.opened_at + t.max_age_s:
                reason = CompletionReason.MAX_AGE
            else:
                continue
            for sk in st.series_keys:
                s = p.series[sk]
                if s.open:
                    sr = CompletionReason.MAX_AGE if reason is CompletionReason.MAX_AGE \
                        else CompletionReason.STUDY_COMPLETE
                    out.append(self._close_series(p, s, now, sr))
            out.append(self._close_study(p, st, now, reason))
        if (not any(s.open for s in p.series.values()) and not any(st.open for st in p.studies.values())
                and now >= p.last_seen + self.policy.retain_closed_s):
            del self.patients[key]
            self.purged[key] = p
        return out

    def expire_due(self, now: float) -> list[Event]:
        out: list[Event] = []
        for key in self.due(now):
            out.extend(self.expire(key, now))
        return out

    # -- emission --------------------------------------------------------------------------
    def _close_series(self, p: PatientState, s: SeriesState, now: float,
                      reason: CompletionReason) -> SeriesCompleted:
        study = p.studies[s.study_uid]
        s.revision += 1
        if s.late:
            reason = CompletionReason.LATE_DATA
        s.open, s.late, s.closed_at = False, False, now
        p.dirty_series.add((s.study_uid, s.series_uid))
        p.dirty_meta = True
        assert s.first_received_at is not None and s.last_received_at is not None
        return SeriesCompleted(
            event_id=str(uuid.uuid5(_EVENT_NS, f"series|{p.key}|{s.study_uid}|{s.series_uid}|{s.revision}")),
            occurred_at=_dt(now), producer=self.producer, patient_key=p.key,
            study_instance_uid=s.study_uid, series_instance_uid=s.series_uid, revision=s.revision,
            reason=reason, accession_number=s.accession_number, modality=s.modality,
            body_part_examined=s.body_part_examined, series_description=s.series_description,
            series_number=s.series_number, image_orientation_patient=s.image_orientation_patient,
            slice_thickness=s.slice_thickness, station_name=s.station_name,
            calling_ae_title=s.calling_ae_title, called_ae_title=s.called_ae_title,
            first_received_at=s.first_received_at, last_received_at=s.last_received_at,
            instances=reconstruction_order(s.instances.values()),
            study_date=study.study_date, study_time=study.study_time, study_description=study.study_description,
            institution_name=study.institution_name, referring_physician_name=study.referring_physician_name,
            manufacturer=s.manufacturer, attributes=s.attributes, ae_pipelines=s.ae_pipelines,
        )

    def _close_study(self, p: PatientState, st: StudyState, now: float,
                     reason: CompletionReason) -> StudyCompleted:
        st.revision += 1
        if st.late:
            reason = CompletionReason.LATE_DATA
        st.open, st.late, st.closed_at = False, False, now
        p.dirty_meta = True
        assert st.first_received_at is not None and st.last_received_at is not None
        summaries = []
        for sk in st.series_keys:
            s = p.series[sk]
            summaries.append(SeriesSummary(
                series_instance_uid=s.series_uid, revision=s.revision, instance_count=len(s.instances),
                modality=s.modality, series_description=s.series_description, series_number=s.series_number,
                body_part_examined=s.body_part_examined))
        summaries.sort(key=lambda x: (x.series_number is None, x.series_number or 0, x.series_instance_uid))
        return StudyCompleted(
            event_id=str(uuid.uuid5(_EVENT_NS, f"study|{p.key}|{st.study_uid}|{st.revision}")),
            occurred_at=_dt(now), producer=self.producer, patient_key=p.key,
            study_instance_uid=st.study_uid, revision=st.revision, reason=reason,
            calling_ae_title=st.calling_ae_title, called_ae_title=st.called_ae_title,
            first_received_at=st.first_received_at, last_received_at=st.last_received_at,
            series=summaries, **study_identity(st),
        )
