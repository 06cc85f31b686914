"""Quiet periods per pipeline: the pipelines that route a series set when it (and its study) closes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from radstream.stream_apps.aggregator import pipeline_timeouts
from radstream.stream_apps.grouping import Aggregator, TimeoutPolicy, Timeouts

from radstream.events.models import CompletionReason, SeriesCompleted, StudyCompleted
from radstream.settings import Settings
from tests.unit.test_aggregator_grouping import Clock, inst

pytestmark = pytest.mark.unit


def _pipeline(folder: Path, name: str, routing: dict[str, object], completion: dict[str, float] | None) -> None:
    data: dict[str, object] = {"name": name, "routing": routing, "model": {"name": f"{name}_model"},
                             "operators": [{"op": "load_series"}]}
    if completion is not None:
        data["completion"] = completion
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))


def _policy(tmp_path: Path, ae: dict[str, dict[str, float]] | None = None) -> TimeoutPolicy:
    _pipeline(tmp_path, "xray", {"modality": ["DX", "CR"]}, {"series_quiet_s": 5, "patient_quiet_s": 8})
    _pipeline(tmp_path, "mr-slow", {"modality": "^MR$", "series_description": "flair"}, {"series_quiet_s": 120})
    _pipeline(tmp_path, "mr-slower", {"modality": "^MR$", "station": "^MRI2$"}, {"series_quiet_s": 300})
    _pipeline(tmp_path, "plain", {"modality": "^MR$"}, None)  # no completion: changes nothing
    s = Settings(pipelines_dir=tmp_path,  # type: ignore[call-arg]
                 aggregator={"series_quiet_s": 60, "patient_quiet_s": 60, "overrides": ae or {}})
    pts = pipeline_timeouts(s)
    assert sorted(p.name for p in pts) == ["mr-slow", "mr-slower", "xray"]
    return TimeoutPolicy.from_settings(s.aggregator, pts)


def _closes_after(policy: TimeoutPolicy, **kw: object) -> tuple[float, float]:
    """Seconds after the last instance at which its series and its study closed."""
    c = Clock()
    a = Aggregator(policy)
    start = c()
    a.add(inst(**kw), c())  # type: ignore[arg-type]
    series_at = study_at = None
    while study_at is None:
        for ev in a.expire_due(c.advance(1)):
            if isinstance(ev, SeriesCompleted) and series_at is None:
                series_at = c() - start
                assert ev.reason in (CompletionReason.QUIET_PERIOD, CompletionReason.STUDY_COMPLETE)
            if isinstance(ev, StudyCompleted):
                study_at = c() - start
    assert series_at is not None
    return series_at, study_at


def test_a_pipelines_quiet_periods_apply_to_the_series_it_routes(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    dx = inst(sop="d1")
    dx.modality = "DX"
    assert policy.for_series(_series_of(dx)) == Timeouts(5, 8, 4 * 3600)
    assert _closes_after(policy, sop="x1") == (120, 120)  # MR FLAIR: mr-slow's 120 s; study: default 60 < 120


def test_the_longest_of_several_routing_pipelines_wins(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    ev = inst(sop="m1")
    ev.station_name = "MRI2"
    assert policy.for_series(_series_of(ev)).series_quiet_s == 300


def test_unrouted_series_keep_the_called_ae_titles_quiet_periods(tmp_path: Path) -> None:
    policy = _policy(tmp_path, ae={"FAST": {"series_quiet_s": 2, "patient_quiet_s": 3}})
    ev = inst(sop="c1", called="FAST")
    ev.modality, ev.series_description = "CT", "abdomen"
    assert policy.for_series(_series_of(ev)) == Timeouts(2, 3, 4 * 3600)
    ev.modality = "CR"  # now the xray pipeline routes it: its values win over the AE title's
    assert policy.for_series(_series_of(ev)) == Timeouts(5, 8, 4 * 3600)


def test_radiograph_study_closes_on_the_pipelines_patient_quiet_period(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    c = Clock()
    a = Aggregator(policy)
    ev = inst(sop="r1")
    ev.modality = "DX"
    a.add(ev, c())
    assert a.expire_due(c.advance(4)) == []
    (series,) = a.expire_due(c.advance(1))
    assert isinstance(series, SeriesCompleted)
    assert a.expire_due(c.advance(2)) == []
    (study,) = a.expire_due(c.advance(1))
    assert isinstance(study, StudyCompleted) and study.reason is CompletionReason.QUIET_PERIOD


def _series_of(ev: object) -> object:
    a = Aggregator(TimeoutPolicy(Timeouts()))
    a.add(ev, 0.0)  # type: ignore[arg-type]
    (s,) = a.patients["P1"].series.values()
    return s
