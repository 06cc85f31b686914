"""Counting after a fault: what was acknowledged is stored and on the instances topic; every
completed study has exactly one result (or failure) per matching pipeline; no duplicate rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from radstream.bench.measure import fetch_completions, fetch_results
from radstream.settings import Settings


@dataclass
class FaultCount:
    fault: str
    sent: int
    acked: int
    on_topic: int
    in_store: int
    studies: int
    studies_completed: int
    results: int
    failures: int
    duplicates: int
    missing_results: list[str] = field(default_factory=list)
    acked_not_found: list[str] = field(default_factory=list)
    # per study with more than one result: its completions (kind, revision) and its results' request ids
    duplicate_detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.acked == self.sent and self.on_topic == self.acked and self.in_store == self.acked
                and self.studies_completed == self.studies and not self.missing_results and self.duplicates == 0)

    def line(self) -> str:
        return (f"fault {self.fault:<24} instances sent {self.sent:4d}, acknowledged {self.acked:4d}, "
                f"found {self.on_topic:4d} on topic / {self.in_store:4d} in store; studies completed "
                f"{self.studies_completed}/{self.studies}; results {self.results} (failures {self.failures}); "
                f"duplicates {self.duplicates}" + "".join(f"\n  {d}" for d in self.duplicate_detail))


def instances_on_topic(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """SOP Instance UID -> store URI of every InstanceReceived on the instances topic (read to its end)."""
    from radstream.events.codec import codec_for
    from radstream.events.models import InstanceReceived
    from radstream.kafka.read_to_end import read_to_end

    codec = codec_for(settings)
    out: dict[str, str] = {}
    for msg in read_to_end(settings, [settings.topic("instances")], timeout=timeout, client_id="fault-check"):
        value = msg.value()
        if value is None:
            continue
        e = codec.decode(value)
        if isinstance(e, InstanceReceived):
            out[e.sop_instance_uid] = e.store_uri
    return out


def count_after_fault(fault: str, settings: Settings, sent: set[str], acked: set[str],
                      studies: dict[str, str]) -> FaultCount:
    """``studies``: study UID -> the pipeline it matches."""
    from radstream.store import path_for_uri

    topic = instances_on_topic(settings)
    found = [s for s in acked if s in topic]
    in_store = [s for s in found if path_for_uri(topic[s], settings.store_root).is_file()]
    completions = fetch_completions(settings)
    completed = {c.uid for c in completions if c.kind == "study"}
    rows = [r for r in fetch_results(settings) if r.study_instance_uid in studies
            and r.pipeline == studies[r.study_instance_uid]]
    per_study = Counter(r.study_instance_uid for r in rows)
    detail = [f"study {uid}: completions {sorted((c.kind, c.revision) for c in completions if c.uid == uid)}; "
              f"results {[(r.request_id, r.status) for r in rows if r.study_instance_uid == uid]}"
              for uid, n in per_study.items() if n > 1]
    return FaultCount(
        fault=fault, sent=len(sent), acked=len(acked), on_topic=len(found), in_store=len(in_store),
        studies=len(studies), studies_completed=len(completed & set(studies)), results=len(rows),
        failures=sum(1 for r in rows if r.status == "failed"),
        duplicates=sum(n - 1 for n in per_study.values()),
        missing_results=sorted(set(studies) - set(per_study)), acked_not_found=sorted(acked - set(in_store)),
        duplicate_detail=detail,
    )
