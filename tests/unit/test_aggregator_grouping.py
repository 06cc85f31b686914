"""Grouping state machine with an injectable clock (no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from radstream.stream_apps.grouping import (
    AddOutcome,
    Aggregator,
    TimeoutPolicy,
    Timeouts,
    position_along_normal,
)
from radstream.stream_apps.state_codec import StateRestorer, dirty_records, tombstones

from radstream.events.models import CompletionReason, InstanceReceived, SeriesCompleted, StudyCompleted

pytestmark = pytest.mark.unit

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


def inst(patient: str = "P1", study: str = "1.2.1", series: str = "1.2.1.1", sop: str = "1.2.1.1.1",
         z: float | None = 0.0, number: int | None = 1, called: str = "RADSTREAM", t: float = 0.0,
         iop: list[float] | None = AXIAL) -> InstanceReceived:
    return InstanceReceived(
        producer="test", patient_key=patient, sop_class_uid="1.2.840.10008.5.1.4.1.1.4", sop_instance_uid=sop,
        series_instance_uid=series, study_instance_uid=study, modality="MR", series_description="AX FLAIR",
        instance_number=number, image_position_patient=None if z is None else [0.0, 0.0, z],
        image_orientation_patient=iop, calling_ae_title="SCANNER", called_ae_title=called,
        peer_address="127.0.0.1", transfer_syntax_uid="1.2.840.10008.1.2.1", byte_size=100, sha256="0" * 64,
        store_uri=f"file:///store/{sop}.dcm", received_at=datetime.fromtimestamp(t or 1_700_000_000, UTC),
    )


def agg(series_q: float = 60, patient_q: float = 60, max_age: float = 3600,
        overrides: dict[str, Timeouts] | None = None) -> Aggregator:
    return Aggregator(TimeoutPolicy(Timeouts(series_q, patient_q, max_age), overrides, retain_closed_s=86400))


def series_events(evs: list[object]) -> list[SeriesCompleted]:
    return [e for e in evs if isinstance(e, SeriesCompleted)]


def study_events(evs: list[object]) -> list[StudyCompleted]:
    return [e for e in evs if isinstance(e, StudyCompleted)]


def test_series_closes_after_quiet_period_not_before() -> None:
    c, a = Clock(), agg(series_q=60, patient_q=120)
    for i in range(3):
        a.add(inst(sop=f"s{i}", z=float(i), number=i + 1), c.advance(1))
    assert a.expire_due(c.advance(59.9)) == []
    assert a.deadline("P1") == pytest.approx(c.t + 0.1)
    evs = a.expire_due(c.advance(0.1))
    (s,) = series_events(evs)
    assert s.reason is CompletionReason.QUIET_PERIOD and s.revision == 0
    assert [i.sop_instance_uid for i in s.instances] == ["s0", "s1", "s2"]
    assert study_events(evs) == []
    evs = a.expire_due(c.advance(60))
    (st,) = study_events(evs)
    assert st.reason is CompletionReason.QUIET_PERIOD and st.series[0].instance_count == 3
    assert a.expire_due(c.advance(1000)) == []


def test_duplicates_are_dropped_and_do_not_extend_quiet_period() -> None:
    c, a = Clock(), agg(series_q=10, patient_q=10)
    assert a.add(inst(sop="x"), c()) is AddOutcome.NEW
    c.advance(9)
    assert a.add(inst(sop="x"), c()) is AddOutcome.DUPLICATE
    evs = a.expire_due(c.advance(1))
    (s,) = series_events(evs)
    assert len(s.instances) == 1
    # a duplicate of a closed series is not late data
    assert a.add(inst(sop="x"), c.advance(1)) is AddOutcome.DUPLICATE
    assert a.expire_due(c.advance(100)) == []


def test_late_instance_reemits_series_and_study_with_next_revision() -> None:
    c, a = Clock(), agg(series_q=10, patient_q=20)
    a.add(inst(sop="a", z=0), c())
    first = a.expire_due(c.advance(30))
    assert [type(e).__name__ for e in first] == ["SeriesCompleted", "StudyCompleted"]
    assert a.add(inst(sop="b", z=-5), c.advance(100)) is AddOutcome.LATE
    assert a.expire_due(c.advance(9)) == []
    evs = a.expire_due(c.advance(11))
    (s,) = series_events(evs)
    (st,) = study_events(evs)
    assert (s.revision, s.reason) == (1, CompletionReason.LATE_DATA)
    assert [i.sop_instance_uid for i in s.instances] == ["b", "a"]  # ordered along the normal
    assert (st.revision, st.reason) == (1, CompletionReason.LATE_DATA)
    assert st.series[0].revision == 1 and st.series[0].instance_count == 2
    assert s.event_id != first[0].event_id


def test_interleaved_patients_close_independently() -> None:
    c, a = Clock(), agg(series_q=10, patient_q=15)
    for i in range(10):
        a.add(inst(patient="P1", study="A", series="A.1", sop=f"p1-{i}", z=i), c.advance(1))
        if i < 5:
            a.add(inst(patient="P2", study="B", series="B.1", sop=f"p2-{i}", z=i), c())
    # P2's last instance was 5 s before P1's
    evs = a.expire_due(c.advance(6))
    assert [(e.patient_key, len(e.instances)) for e in series_events(evs)] == [("P2", 5)]
    evs = a.expire_due(c.advance(4))
    assert [(e.patient_key, len(e.instances)) for e in series_events(evs)] == [("P1", 10)]
    assert [e.patient_key for e in study_events(evs)] == ["P2"]
    evs = a.expire_due(c.advance(5))
    assert [e.patient_key for e in study_events(evs)] == ["P1"]


def test_series_split_across_two_studies_completes_once_per_study() -> None:
    c, a = Clock(), agg(series_q=10, patient_q=10)
    for i in range(4):
        a.add(inst(study="S1", series="SER", sop=f"a{i}", z=i), c.advance(1))
    for i in range(3):
        a.add(inst(study="S2", series="SER", sop=f"b{i}", z=i), c.advance(1))
    evs = a.expire_due(c.advance(10))
    got = sorted((e.study_instance_uid, e.series_instance_uid, len(e.instances)) for e in series_events(evs))
    assert got == [("S1", "SER", 4), ("S2", "SER", 3)]
    studies = sorted((e.study_instance_uid, [s.instance_count for s in e.series]) for e in study_events(evs))
    assert studies == [("S1", [4]), ("S2", [3])]


def test_patient_quiet_closes_series_still_open_with_study_complete() -> None:
    c, a = Clock(), agg(series_q=100, patient_q=20)
    a.add(inst(sop="a"), c())
    evs = a.expire_due(c.advance(20))
    assert [(type(e).__name__, e.reason) for e in evs] == [
        ("SeriesCompleted", CompletionReason.STUDY_COMPLETE), ("StudyCompleted", CompletionReason.QUIET_PERIOD)]


def test_max_age_forces_completion_of_a_series_that_never_goes_quiet() -> None:
    c, a = Clock(), agg(series_q=10, patient_q=10, max_age=50)
    for i in range(60):
        a.add(inst(sop=f"i{i}", z=i), c.advance(1))
        evs = a.expire_due(c())
        if evs:
            break
    assert c.t - 1_700_000_000.0 == pytest.approx(51)  # first add at +1, forced 50 s later
    assert {e.reason for e in evs} == {CompletionReason.MAX_AGE}
    assert len(series_events(evs)) == 1 and len(study_events(evs)) == 1


def test_called_ae_title_overrides_quiet_periods() -> None:
    c = Clock()
    a = agg(series_q=60, patient_q=60, overrides={"XRAY": Timeouts(5, 5, 3600)})
    a.add(inst(patient="P1", sop="cr", called="xray"), c())
    a.add(inst(patient="P2", sop="mr", called="RADSTREAM"), c())
    evs = a.expire_due(c.advance(5))
    assert {e.patient_key for e in evs} == {"P1"} and len(study_events(evs)) == 1
    assert {e.patient_key for e in a.expire_due(c.advance(55))} == {"P2"}


def test_reconstruction_order_uses_normal_then_instance_number() -> None:
    sag = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # normal = row x col = (-1, 0, 0)
    assert position_along_normal([10.0, 3.0, 4.0], sag) == pytest.approx(-10.0)
    c, a = Clock(), agg(series_q=1, patient_q=100)
    a.add(inst(sop="x1", z=None, number=3, iop=None), c())
    a.add(inst(sop="x2", z=None, number=1, iop=None), c())
    a.add(inst(sop="x3", z=None, number=2, iop=None), c())
    (s,) = series_events(a.expire_due(c.advance(1)))
    assert [i.sop_instance_uid for i in s.instances] == ["x2", "x3", "x1"]
    c2, b = Clock(), agg(series_q=1, patient_q=100)
    # same position (two echoes): instance number breaks the tie
    for sop, z, n in [("e", 5.0, 4), ("a", -5.0, 9), ("d", 5.0, 2), ("b", 0.0, 1)]:
        b.add(inst(sop=sop, z=z, number=n), c2())
    (s,) = series_events(b.expire_due(c2.advance(1)))
    assert [i.sop_instance_uid for i in s.instances] == ["a", "b", "d", "e"]


def test_state_round_trips_through_changelog_records() -> None:
    c, a = Clock(), agg(series_q=10, patient_q=30)
    a.add(inst(sop="a", z=1), c())
    a.add(inst(study="S2", series="X", sop="b", z=2), c.advance(1))
    first = a.expire_due(c.advance(10))  # both series closed, studies still open
    a.add(inst(sop="c", z=3), c.advance(1))  # late for series 1.2.1.1
    restorer = StateRestorer()
    for key, value in dirty_records(a.patients["P1"]):
        restorer.apply(key, value)
    b = Aggregator(a.policy)
    b.patients = restorer.patients()
    assert b.add(inst(sop="a"), c()) is AddOutcome.DUPLICATE
    ea, eb = a.expire_due(c.advance(30)), b.expire_due(c())
    assert [e.to_avro() for e in ea] == [e.to_avro() for e in eb]
    assert {e.revision for e in series_events(ea) if e.series_instance_uid == "1.2.1.1"} == {1}
    assert len(first) == 2


def test_closed_patients_are_purged_after_retention() -> None:
    c = Clock()
    a = Aggregator(TimeoutPolicy(Timeouts(1, 1, 100), retain_closed_s=50))
    a.add(inst(sop="a"), c())
    restorer = StateRestorer()
    assert len(a.expire_due(c.advance(1))) == 2
    for k, v in dirty_records(a.patients["P1"]):
        restorer.apply(k, v)
    a.expire_due(c.advance(100))
    assert "P1" not in a.patients and list(a.purged) == ["P1"]
    for k, v in tombstones(a.purged["P1"]):
        restorer.apply(k, v)
    assert restorer.patients() == {} and restorer.instances.get("P1", {}) == {}
