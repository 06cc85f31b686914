"""Dispatch decisions without Kafka: completed series/studies in, InferenceRequested out.

Keeps the latest SeriesCompleted per (patient, study, series) so a study-level request can list
the selected series with their instances. A StudyCompleted that arrives before some of its
series (they travel on another topic) waits until they are there. A pipeline never gets the
same set of series revisions twice for one study (the request id is derived from it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from radstream import __version__
from radstream.events.models import (
    InferenceRequested,
    SelectedSeries,
    SeriesCompleted,
    StudyCompleted,
    Trigger,
    study_identity,
)
from radstream.events.serde import Codec
from radstream.pipelines.rules import SeriesFacts, requirements_met, select
from radstream.pipelines.spec import PipelineSpec

PRODUCER = f"radstream-dispatcher/{__version__}"
_NS = uuid.UUID("0b9d7f3e-3a52-4c1e-8f3d-2f6a9c8e4b71")
SEP = "\x1f"


@dataclass
class Dispatch:
    """What handling one event produced."""

    requests: list[InferenceRequested] = field(default_factory=list)
    changelog: list[tuple[str, bytes | None]] = field(default_factory=list)


class DispatchState:
    """State of one partition of the series/studies topics."""

    def __init__(self, pipelines: list[PipelineSpec], codec: Codec, producer: str = PRODUCER) -> None:
        self.pipelines = pipelines
        self.codec = codec
        self.producer = producer
        self.series: dict[tuple[str, str], dict[str, SeriesCompleted]] = {}  # (patient, study) -> uid -> latest
        self.pending: dict[tuple[str, str], StudyCompleted] = {}
        self.fired: dict[tuple[str, str, str], set[str]] = {}  # (pipeline, patient, study) -> signatures

    # -- changelog -------------------------------------------------------------------------
    def apply(self, key: str, value: bytes | None) -> None:
        kind, *parts = key.split(SEP)
        if kind == "s":
            patient, study, series = parts
            if value is None:
                self.series.get((patient, study), {}).pop(series, None)
            else:
                ev = self.codec.decode(value)
                assert isinstance(ev, SeriesCompleted)
                self.series.setdefault((patient, study), {})[series] = ev
        elif kind == "p":
            patient, study = parts
            if value is None:
                self.pending.pop((patient, study), None)
            else:
                st = self.codec.decode(value)
                assert isinstance(st, StudyCompleted)
                self.pending[(patient, study)] = st
        elif kind == "f":
            pipeline, patient, study = parts
            if value is None:
                self.fired.pop((pipeline, patient, study), None)
            else:
                self.fired[(pipeline, patient, study)] = set(json.loads(value))

    # -- events ----------------------------------------------------------------------------
    def on_series(self, ev: SeriesCompleted) -> Dispatch:
        out = Dispatch()
        study_key = (ev.patient_key, ev.study_instance_uid)
        known = self.series.setdefault(study_key, {})
        old = known.get(ev.series_instance_uid)
        if old is not None and old.revision >= ev.revision:
            return out  # a re-delivery or an older revision
        known[ev.series_instance_uid] = ev
        out.changelog.append((SEP.join(("s", ev.patient_key, ev.study_instance_uid, ev.series_instance_uid)),
                              self.codec.encode(ev)))
        for spec in self.pipelines:
            if Trigger.SERIES_COMPLETE in spec.trigger:
                chosen, _ = select(spec, [SeriesFacts.from_event(ev)])
                if chosen:
                    self._fire(spec, [ev], Trigger.SERIES_COMPLETE, ev.event_id, out)
            if Trigger.RULE in spec.trigger:
                all_series = list(known.values())
                facts = [SeriesFacts.from_event(s) for s in all_series]
                ok, _ = requirements_met(spec, facts)
                if ok:
                    chosen, _ = select(spec, facts)
                    uids = {f.series_instance_uid for f in chosen}
                    picked = [s for s in all_series if s.series_instance_uid in uids]
                    if picked:
                        self._fire(spec, picked, Trigger.RULE, ev.event_id, out)
        pending = self.pending.get(study_key)
        if pending is not None and self._complete(pending):
            del self.pending[study_key]
            out.changelog.append((SEP.join(("p", *study_key)), None))
            self._study(pending, out)
        return out

    def on_study(self, ev: StudyCompleted) -> Dispatch:
        out = Dispatch()
        if self._complete(ev):
            self._study(ev, out)
        else:
            self.pending[(ev.patient_key, ev.study_instance_uid)] = ev
            out.changelog.append((SEP.join(("p", ev.patient_key, ev.study_instance_uid)), self.codec.encode(ev)))
        return out

    def purge(self, older_than: float) -> list[tuple[str, bytes | None]]:
        """Forget studies whose newest series arrived before ``older_than`` (epoch s); tombstones."""
        out: list[tuple[str, bytes | None]] = []
        for (patient, study), known in list(self.series.items()):
            if known and max(s.last_received_at.timestamp() for s in known.values()) >= older_than:
                continue
            out += [(SEP.join(("s", patient, study, uid)), None) for uid in known]
            del self.series[(patient, study)]
            if self.pending.pop((patient, study), None) is not None:
                out.append((SEP.join(("p", patient, study)), None))
            for fkey in [k for k in self.fired if k[1:] == (patient, study)]:
                del self.fired[fkey]
                out.append((SEP.join(("f", *fkey)), None))
        return out

    # -- internals -------------------------------------------------------------------------
    def _complete(self, st: StudyCompleted) -> bool:
        known = self.series.get((st.patient_key, st.study_instance_uid), {})
        return all(s.series_instance_uid in known and known[s.series_instance_uid].revision >= s.revision
                   for s in st.series)

    def _study(self, st: StudyCompleted, out: Dispatch) -> None:
        known = self.series.get((st.patient_key, st.study_instance_uid), {})
        members = [known[s.series_instance_uid] for s in st.series]
        facts = [SeriesFacts.from_event(s) for s in members]
        for spec in self.pipelines:
            if Trigger.STUDY_COMPLETE not in spec.trigger:
                continue
            chosen, _ = select(spec, facts)
            uids = {f.series_instance_uid for f in chosen}
            picked = [s for s in members if s.series_instance_uid in uids]
            if picked:
                self._fire(spec, picked, Trigger.STUDY_COMPLETE, st.event_id, out)

    def _fire(self, spec: PipelineSpec, series: list[SeriesCompleted], trigger: Trigger, source_event_id: str,
              out: Dispatch) -> None:
        first = series[0]
        ordered = sorted(series, key=lambda s: (s.series_number or 0, s.series_instance_uid))
        signature = ",".join(sorted(f"{s.series_instance_uid}:{s.revision}" for s in series))
        fkey = (spec.name, first.patient_key, first.study_instance_uid)
        done = self.fired.setdefault(fkey, set())
        if signature in done:
            return
        done.add(signature)
        out.changelog.append((SEP.join(("f", *fkey)), json.dumps(sorted(done)).encode()))
        request_id = str(uuid.uuid5(_NS, f"{spec.name}|{spec.version}|{first.patient_key}|"
                                         f"{first.study_instance_uid}|{signature}"))
        out.requests.append(InferenceRequested(
            event_id=request_id, producer=self.producer, patient_key=first.patient_key, request_id=request_id,
            study_instance_uid=first.study_instance_uid, **study_identity(first), modality=ordered[0].modality,
            pipeline=spec.name, pipeline_version=spec.version, model_name=spec.model.name,
            model_version=spec.model.version, shadow=spec.shadow, trigger=trigger,
            source_event_id=source_event_id, last_received_at=max(s.last_received_at for s in series),
            series=[SelectedSeries(series_instance_uid=s.series_instance_uid, revision=s.revision,
                                   modality=s.modality, series_description=s.series_description,
                                   instances=list(s.instances))
                    for s in ordered],
        ))
