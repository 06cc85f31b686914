"""Typed Python mirrors of the Avro schemas in ``schemas/``.

The ``.avsc`` files are the single source of truth; these classes follow them field for
field (names, order, optionality), and ``tests/unit/test_event_models.py`` fails if they
drift apart. Timestamps are timezone-aware ``datetime`` values (Avro ``timestamp-millis``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any, ClassVar, Protocol, Self, TypedDict


def new_event_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """Now, truncated to the millisecond precision that Avro timestamp-millis keeps."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class CompletionReason(StrEnum):
    QUIET_PERIOD = "QUIET_PERIOD"
    MAX_AGE = "MAX_AGE"
    LATE_DATA = "LATE_DATA"
    STUDY_COMPLETE = "STUDY_COMPLETE"
    FORCED = "FORCED"


class Trigger(StrEnum):
    SERIES_COMPLETE = "SERIES_COMPLETE"
    STUDY_COMPLETE = "STUDY_COMPLETE"
    RULE = "RULE"
    REPLAY = "REPLAY"
    MANUAL = "MANUAL"


class QcDecision(StrEnum):
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class Record:
    """Base of every Avro record class: conversion to and from fastavro's dicts."""

    __slots__ = ()

    SCHEMA_NAME: ClassVar[str]
    # field name -> record class, for fields holding a list of nested records
    NESTED: ClassVar[dict[str, type[Record]]] = {}
    # field name -> enum class
    ENUMS: ClassVar[dict[str, type[StrEnum]]] = {}
    _FIELD_NAMES: ClassVar[tuple[str, ...]]
    _GETTER: ClassVar[Callable[[Any], tuple[Any, ...]]]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_FIELD_NAMES")
        if names is None:
            names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            cls._FIELD_NAMES = names
            cls._GETTER = attrgetter(*names)
        return names

    def to_avro(self) -> dict[str, Any]:
        cls = type(self)
        getter = cls.__dict__.get("_GETTER")
        if getter is None:
            cls.field_names()
            getter = cls._GETTER
        data = dict(zip(cls._FIELD_NAMES, getter(self), strict=True))
        for name in self.NESTED:
            data[name] = [item.to_avro() for item in data[name]]
        return data

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        for name, rec in cls.NESTED.items():
            data[name] = [rec.from_avro(item) for item in data[name]]
        for name, enum in cls.ENUMS.items():
            data[name] = enum(data[name])
        return cls(**data)


class Event(Record):
    """A top-level event: it has an id, a time and a producer."""

    __slots__ = ()

    event_id: str
    occurred_at: datetime
    producer: str


@dataclass(slots=True, kw_only=True)
class InstanceRef(Record):
    SCHEMA_NAME: ClassVar[str] = "InstanceRef"
    sop_instance_uid: str
    sop_class_uid: str
    store_uri: str
    sha256: str
    byte_size: int
    instance_number: int | None = None
    position_along_normal: float | None = None
    received_at: datetime


@dataclass(slots=True)
class SeriesSummary(Record):
    SCHEMA_NAME: ClassVar[str] = "SeriesSummary"
    series_instance_uid: str
    revision: int
    instance_count: int
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    body_part_examined: str | None = None


@dataclass(slots=True)
class Measurement(Record):
    SCHEMA_NAME: ClassVar[str] = "Measurement"
    name: str
    label: str
    value: float
    unit: str


@dataclass(slots=True)
class Detection(Record):
    SCHEMA_NAME: ClassVar[str] = "Detection"
    label: str
    finding: str
    score: float
    box: list[float]
    sop_instance_uid: str | None = None


@dataclass(slots=True, kw_only=True)
class SelectedSeries(Record):
    SCHEMA_NAME: ClassVar[str] = "SelectedSeries"
    NESTED: ClassVar[dict[str, type[Record]]] = {"instances": InstanceRef}
    series_instance_uid: str
    revision: int
    modality: str | None = None
    series_description: str | None = None
    instances: list[InstanceRef]


@dataclass(slots=True)
class FindingFeedback(Record):
    SCHEMA_NAME: ClassVar[str] = "FindingFeedback"
    finding: str
    agree: bool | None = None
    reader_label: str | None = None
    comment: str | None = None


@dataclass(slots=True, kw_only=True)
class InstanceReceived(Event):
    SCHEMA_NAME: ClassVar[str] = "InstanceReceived"
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    patient_key: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    accession_number: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    image_position_patient: list[float] | None = None
    image_orientation_patient: list[float] | None = None
    pixel_spacing: list[float] | None = None
    slice_thickness: float | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    station_name: str | None = None
    manufacturer: str | None = None
    study_date: str | None = None
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    transfer_syntax_uid: str
    byte_size: int
    sha256: str
    store_uri: str
    received_at: datetime
    study_time: str | None = None
    study_description: str | None = None
    institution_name: str | None = None
    referring_physician_name: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    ae_pipelines: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class SeriesCompleted(Event):
    SCHEMA_NAME: ClassVar[str] = "SeriesCompleted"
    NESTED: ClassVar[dict[str, type[Record]]] = {"instances": InstanceRef}
    ENUMS: ClassVar[dict[str, type[StrEnum]]] = {"reason": CompletionReason}
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    patient_key: str
    study_instance_uid: str
    series_instance_uid: str
    revision: int
    reason: CompletionReason
    accession_number: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    image_orientation_patient: list[float] | None = None
    slice_thickness: float | None = None
    station_name: str | None = None
    calling_ae_title: str
    called_ae_title: str
    first_received_at: datetime
    last_received_at: datetime
    instances: list[InstanceRef]
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    institution_name: str | None = None
    referring_physician_name: str | None = None
    manufacturer: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    ae_pipelines: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class StudyCompleted(Event):
    SCHEMA_NAME: ClassVar[str] = "StudyCompleted"
    NESTED: ClassVar[dict[str, type[Record]]] = {"series": SeriesSummary}
    ENUMS: ClassVar[dict[str, type[StrEnum]]] = {"reason": CompletionReason}
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    patient_key: str
    study_instance_uid: str
    revision: int
    reason: CompletionReason
    accession_number: str | None = None
    study_date: str | None = None
    calling_ae_title: str
    called_ae_title: str
    first_received_at: datetime
    last_received_at: datetime
    series: list[SeriesSummary]
    study_time: str | None = None
    study_description: str | None = None
    institution_name: str | None = None
    station_name: str | None = None
    referring_physician_name: str | None = None


@dataclass(slots=True, kw_only=True)
class _RequestFields(Event):
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    patient_key: str
    request_id: str
    study_instance_uid: str
    accession_number: str | None = None
    pipeline: str
    pipeline_version: str
    model_name: str
    model_version: str
    shadow: bool = False
    replay_id: str | None = None


@dataclass(slots=True, kw_only=True)
class InferenceRequested(_RequestFields):
    SCHEMA_NAME: ClassVar[str] = "InferenceRequested"
    NESTED: ClassVar[dict[str, type[Record]]] = {"series": SelectedSeries}
    ENUMS: ClassVar[dict[str, type[StrEnum]]] = {"trigger": Trigger}
    trigger: Trigger
    source_event_id: str
    last_received_at: datetime
    series: list[SelectedSeries]
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    modality: str | None = None
    institution_name: str | None = None
    station_name: str | None = None
    referring_physician_name: str | None = None


@dataclass(slots=True, kw_only=True)
class InferenceCompleted(_RequestFields):
    SCHEMA_NAME: ClassVar[str] = "InferenceCompleted"
    NESTED: ClassVar[dict[str, type[Record]]] = {"measurements": Measurement, "detections": Detection}
    result_id: str
    series_instance_uids: list[str]
    measurements: list[Measurement]
    detections: list[Detection]
    seg_uri: str | None = None
    sr_uri: str | None = None
    blinding_hash: str | None = None
    timings_ms: dict[str, float]
    started_at: datetime
    last_received_at: datetime
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    modality: str | None = None
    institution_name: str | None = None
    station_name: str | None = None
    referring_physician_name: str | None = None


@dataclass(slots=True, kw_only=True)
class InferenceFailed(_RequestFields):
    SCHEMA_NAME: ClassVar[str] = "InferenceFailed"
    result_id: str
    stage: str
    reason: str
    retriable: bool
    attempts: int
    last_received_at: datetime
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    modality: str | None = None
    institution_name: str | None = None
    station_name: str | None = None
    referring_physician_name: str | None = None


@dataclass(slots=True, kw_only=True)
class ReviewSubmitted(Event):
    SCHEMA_NAME: ClassVar[str] = "ReviewSubmitted"
    NESTED: ClassVar[dict[str, type[Record]]] = {"findings": FindingFeedback}
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    review_id: str
    result_id: str
    study_instance_uid: str
    pipeline: str
    reviewer: str
    findings: list[FindingFeedback]
    comment: str | None = None
    time_spent_s: float
    blinding_hash: str | None = None
    corrected_seg_uri: str | None = None
    corrected_volume_ml: float | None = None
    rating: int | None = None


@dataclass(slots=True, kw_only=True)
class QcDecided(Event):
    SCHEMA_NAME: ClassVar[str] = "QcDecided"
    ENUMS: ClassVar[dict[str, type[StrEnum]]] = {"decision": QcDecision}
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    decision_id: str
    result_id: str
    study_instance_uid: str
    pipeline: str
    reviewer: str
    decision: QcDecision
    reason: str | None = None


@dataclass(slots=True, kw_only=True)
class DeadLetter(Event):
    SCHEMA_NAME: ClassVar[str] = "DeadLetter"
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utcnow)
    producer: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_key: bytes | None = None
    payload: bytes
    error_type: str
    error: str
    component: str


class StudyIdentity(TypedDict):
    """The study-level attributes every event from InstanceReceived to the result carries, so that a
    result knows its study's date and time (longitudinal order), description and origin without
    reading the DICOM files again. DICOM text as received; None where not sent. Each step copies
    them with :func:`study_identity`."""

    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None
    institution_name: str | None
    station_name: str | None
    referring_physician_name: str | None


STUDY_IDENTITY_FIELDS: tuple[str, ...] = tuple(StudyIdentity.__annotations__)


class HasStudyIdentity(Protocol):
    """Anything with the study identity's attributes (the events, the aggregator's study state)."""

    @property
    def accession_number(self) -> str | None: ...
    @property
    def study_date(self) -> str | None: ...
    @property
    def study_time(self) -> str | None: ...
    @property
    def study_description(self) -> str | None: ...
    @property
    def institution_name(self) -> str | None: ...
    @property
    def station_name(self) -> str | None: ...
    @property
    def referring_physician_name(self) -> str | None: ...


def study_identity(event: HasStudyIdentity) -> StudyIdentity:
    """The study-level attributes of an event, by field name."""
    return StudyIdentity(
        accession_number=event.accession_number, study_date=event.study_date, study_time=event.study_time,
        study_description=event.study_description, institution_name=event.institution_name,
        station_name=event.station_name, referring_physician_name=event.referring_physician_name)


EVENT_TYPES: tuple[type[Event], ...] = (
    InstanceReceived,
    SeriesCompleted,
    StudyCompleted,
    InferenceRequested,
    InferenceCompleted,
    InferenceFailed,
    ReviewSubmitted,
    QcDecided,
    DeadLetter,
)
RECORD_TYPES: tuple[type[Record], ...] = (
    InstanceRef, SeriesSummary, Measurement, Detection, SelectedSeries, FindingFeedback, *EVENT_TYPES,
)
