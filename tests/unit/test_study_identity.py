"""The study's identity (date, time, description, origin) travels from the instance to the result.

A unit test across the pure parts in the order the real processes run them: the aggregator's
state machine (with a changelog round trip in the middle, as after a restart), the dispatcher's
decisions, and what a worker copies from its request onto the result. The same path through the
real processes is tested by ``tests/integration/test_story.py`` (C-STORE in, web page out).
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, date, datetime, time

import pytest
from radstream.consumers.inference.worker import result_fields
from radstream.stream_apps.dispatch_logic import DispatchState
from radstream.stream_apps.grouping import Aggregator, TimeoutPolicy, Timeouts
from radstream.stream_apps.state_codec import StateRestorer, dirty_records

from radstream.db.results_writer import STUDY_COLS, ResultRows, parse_study_time
from radstream.events.models import (
    STUDY_IDENTITY_FIELDS,
    InferenceCompleted,
    InferenceFailed,
    InferenceRequested,
    InstanceReceived,
    SeriesCompleted,
    StudyCompleted,
    study_identity,
)
from radstream.events.serde import SingleObjectCodec
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.pipelines.spec import load_pipelines

pytestmark = pytest.mark.unit

IDENTITY = {
    "accession_number": "ACC42", "study_date": "20240414", "study_time": "093012.5",
    "study_description": "MR BRAIN W/O", "institution_name": "General Hospital", "station_name": "MR01",
    "referring_physician_name": "Doe^Jane",
}
T0 = 1_700_000_000.0


def _instance(i: int, **identity: str | None) -> InstanceReceived:
    return InstanceReceived(
        producer="test", patient_key="P", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", sop_instance_uid=f"1.2.3.{i}",
        series_instance_uid="1.2.3", study_instance_uid="1.2", modality="MR", body_part_examined="BRAIN",
        series_description="AX FLAIR", series_number=3, instance_number=i + 1, image_position_patient=[0, 0, float(i)],
        image_orientation_patient=[1.0, 0, 0, 0, 1.0, 0], calling_ae_title="MR01", called_ae_title="RADSTREAM",
        peer_address="127.0.0.1", transfer_syntax_uid="1.2.840.10008.1.2.1", byte_size=10, sha256="0" * 64,
        store_uri=f"file:///s/{i}", received_at=datetime.fromtimestamp(T0 + i, UTC), **identity)


def test_every_event_of_the_chain_has_every_identity_field() -> None:
    for cls in (InstanceReceived, SeriesCompleted, StudyCompleted, InferenceRequested, InferenceCompleted,
                InferenceFailed):
        names = {f.name for f in fields(cls)}
        assert set(STUDY_IDENTITY_FIELDS) <= names, (cls.__name__, set(STUDY_IDENTITY_FIELDS) - names)
    for cls in (InferenceRequested, InferenceCompleted, InferenceFailed):
        assert "modality" in {f.name for f in fields(cls)}


def test_identity_from_the_instances_reaches_the_result() -> None:
    agg = Aggregator(TimeoutPolicy(Timeouts(10, 20, 3600), None, retain_closed_s=86400))
    # the first instance lacks the study time and description: a later one fills them in
    first = {**IDENTITY, "study_time": None, "study_description": None}
    agg.add(_instance(0, **first), T0)
    for i in range(1, 10):
        agg.add(_instance(i, **IDENTITY), T0 + i * 0.1)

    # a restart between arrival and completion: the state comes back from its changelog
    restorer = StateRestorer(SingleObjectCodec().decode)
    for key, value in dirty_records(agg.patients["P"]):
        restorer.apply(key, value)
    again = Aggregator(agg.policy)
    again.patients = restorer.patients()
    for p in again.patients.values():
        p.index()

    out = again.expire_due(T0 + 10) + again.expire_due(T0 + 40)
    (series,) = [e for e in out if isinstance(e, SeriesCompleted)]
    (study,) = [e for e in out if isinstance(e, StudyCompleted)]
    assert study_identity(series) == IDENTITY
    assert study_identity(study) == IDENTITY

    specs = load_pipelines(names=["brain-tumour"])
    state = DispatchState(specs, SingleObjectCodec())
    (request,) = state.on_series(series).requests
    assert study_identity(request) == IDENTITY and request.modality == "MR"
    # the study-level trigger has nothing new to send (same series revision), but were it to, the same holds
    assert state.on_study(study).requests == []

    spec = load_inference_pipeline("brain-tumour")
    carried = result_fields(request, spec)
    assert {k: carried[k] for k in STUDY_IDENTITY_FIELDS} == IDENTITY and carried["modality"] == "MR"


def test_the_results_sink_keeps_the_identity_on_the_study_row() -> None:
    specs = load_pipelines(names=["brain-tumour"])
    agg = Aggregator(TimeoutPolicy(Timeouts(10, 20, 3600), None, retain_closed_s=86400))
    for i in range(10):
        agg.add(_instance(i, **IDENTITY), T0)
    (series,) = [e for e in agg.expire_due(T0 + 11) if isinstance(e, SeriesCompleted)]
    (request,) = DispatchState(specs, SingleObjectCodec()).on_series(series).requests
    rows = ResultRows()
    rows.add(request)
    (row,) = rows.seal().ordered[1]
    study = dict(zip(STUDY_COLS, row, strict=True))
    assert study["study_date"] == date(2024, 4, 14) and study["study_time"] == time(9, 30, 12, 500000)
    assert study["study_description"] == "MR BRAIN W/O" and study["institution_name"] == "General Hospital"
    assert study["station_name"] == "MR01" and study["referring_physician_name"] == "Doe^Jane"


@pytest.mark.parametrize(("value", "expected"), [
    ("093012", time(9, 30, 12)), ("0930", time(9, 30)), ("09", time(9)), ("093012.123456", time(9, 30, 12, 123456)),
    ("09:30:12", time(9, 30, 12)), ("235960", time(23, 59, 59)), (" 101500 ", time(10, 15)),
    (None, None), ("", None), ("25", None), ("0960", None), ("9:3", None), ("abc", None), ("093012.x", None),
])
def test_study_time_parsing(value: str | None, expected: time | None) -> None:
    assert parse_study_time(value) == expected
