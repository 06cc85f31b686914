"""Dispatcher decisions (no Kafka): series/study triggers, waiting for series, no duplicate requests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from radstream.stream_apps.dispatch_logic import DispatchState

from radstream.events.models import (
    CompletionReason,
    InstanceRef,
    SeriesCompleted,
    SeriesSummary,
    StudyCompleted,
    Trigger,
)
from radstream.events.serde import SingleObjectCodec
from radstream.pipelines.spec import PipelineSpec

pytestmark = pytest.mark.unit
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def pipe(name: str, trigger: object, **kw: object) -> PipelineSpec:
    return PipelineSpec.model_validate({"name": name, "trigger": trigger, "model": {"name": f"{name}_m",
                                                                                   "version": "1"},
                                       "operators": [{"op": "load_series"}], **kw})


def series(uid: str, desc: str, n: int, rev: int = 0, modality: str = "MR", study: str = "S") -> SeriesCompleted:
    refs = [InstanceRef(sop_instance_uid=f"{uid}.{i}", sop_class_uid="1.2", store_uri=f"file:///{uid}.{i}",
                        sha256="0" * 64, byte_size=1, instance_number=i, position_along_normal=float(i),
                        received_at=T0) for i in range(n)]
    return SeriesCompleted(producer="t", patient_key="P", study_instance_uid=study, series_instance_uid=uid,
                           revision=rev, reason=CompletionReason.QUIET_PERIOD, modality=modality,
                           body_part_examined="BRAIN", series_description=desc, series_number=int(uid[-1]),
                           image_orientation_patient=[1.0, 0, 0, 0, 1.0, 0], calling_ae_title="A",
                           called_ae_title="RADSTREAM", first_received_at=T0, last_received_at=T0, instances=refs)


def study(*members: SeriesCompleted, rev: int = 0) -> StudyCompleted:
    return StudyCompleted(producer="t", patient_key="P", study_instance_uid="S", revision=rev,
                          reason=CompletionReason.QUIET_PERIOD, calling_ae_title="A", called_ae_title="RADSTREAM",
                          first_received_at=T0, last_received_at=T0,
                          series=[SeriesSummary(series_instance_uid=m.series_instance_uid, revision=m.revision,
                                                instance_count=len(m.instances)) for m in members])


FLAIR = {"modality": ["MR"]}, {"series_description": ["flair"], "min_instances": 5}


def test_series_trigger_sends_selected_series_with_its_instances() -> None:
    st = DispatchState([pipe("b", "SERIES_COMPLETE", routing=FLAIR[0], selection=FLAIR[1])], SingleObjectCodec())
    (req,) = st.on_series(series("s1", "AX FLAIR", 6)).requests
    assert req.trigger is Trigger.SERIES_COMPLETE and req.pipeline == "b" and req.model_name == "b_m"
    assert [s.series_instance_uid for s in req.series] == ["s1"] and len(req.series[0].instances) == 6
    assert st.on_series(series("s2", "T1", 6)).requests == []
    assert st.on_series(series("s1", "AX FLAIR", 6)).requests == []  # re-delivery
    (late,) = st.on_series(series("s1", "AX FLAIR", 7, rev=1)).requests  # late data: new revision
    assert late.series[0].revision == 1 and late.request_id != req.request_id


def test_study_trigger_waits_for_series_that_arrive_after_the_study() -> None:
    st = DispatchState([pipe("h", "STUDY_COMPLETE", routing={"modality": ["DX"]})], SingleObjectCodec())
    a, b, c = series("x1", "PELVIS AP", 1, modality="DX"), series("x2", "HIP LAT", 1, modality="DX"), \
        series("x3", "CHEST", 1, modality="CT")
    assert st.on_series(a).requests == []
    d = st.on_study(study(a, b, c))
    assert d.requests == [] and any(k.startswith("p") for k, _ in d.changelog)
    assert st.on_series(c).requests == []
    (req,) = st.on_series(b).requests
    assert req.trigger is Trigger.STUDY_COMPLETE and [s.series_instance_uid for s in req.series] == ["x1", "x2"]


def test_series_and_study_triggers_do_not_send_the_same_selection_twice() -> None:
    st = DispatchState([pipe("b", ["SERIES_COMPLETE", "STUDY_COMPLETE"], routing=FLAIR[0],
                             selection={**FLAIR[1], "pick": "latest"})], SingleObjectCodec())
    s1 = series("s1", "AX FLAIR", 6)
    assert len(st.on_series(s1).requests) == 1
    assert st.on_study(study(s1)).requests == []  # same series revision already requested


def test_required_series_rule_fires_once_all_are_present() -> None:
    p = pipe("r", "RULE", require=[{"name": "flair", "series_description": ["flair"]},
                                   {"name": "t1c", "series_description": ["t1.*post"]}],
             selection={"series_description": ["flair|t1"]})
    st = DispatchState([p], SingleObjectCodec())
    assert st.on_series(series("s1", "AX FLAIR", 6)).requests == []
    (req,) = st.on_series(series("s2", "T1 POST", 6)).requests
    assert req.trigger is Trigger.RULE and {s.series_instance_uid for s in req.series} == {"s1", "s2"}


def test_state_is_restored_from_its_changelog_records() -> None:
    codec = SingleObjectCodec()
    p = [pipe("h", "STUDY_COMPLETE")]
    st = DispatchState(p, codec)
    a, b = series("x1", "A", 1), series("x2", "B", 1)
    records = st.on_series(a).changelog + st.on_study(study(a, b)).changelog
    again = DispatchState(p, codec)
    for k, v in records:
        again.apply(k, v)
    (req,) = again.on_series(b).requests
    assert {s.series_instance_uid for s in req.series} == {"x1", "x2"}


def test_old_studies_are_purged_with_tombstones() -> None:
    codec = SingleObjectCodec()
    st = DispatchState([pipe("h", "STUDY_COMPLETE")], codec)
    a = series("x1", "A", 1)
    st.on_series(a)
    st.on_study(study(a, series("x2", "B", 1)))  # waits for x2
    assert st.purge(T0.timestamp()) == []  # not older than the cut-off
    recs = st.purge(T0.timestamp() + 1)
    assert {k.split("\x1f")[0] for k, v in recs} == {"s", "p"} and all(v is None for _, v in recs)
    assert st.series == {} and st.pending == {}
