"""The aggregator worker (``radstream aggregate``): InstanceReceived -> SeriesCompleted / StudyCompleted.

One :class:`~radstream.stream_apps.grouping.Aggregator` per input partition; its state is
persisted to ``<prefix>.aggregator.changelog`` (compacted, co-partitioned) in the same
transaction as the events and the consumed offsets (see :mod:`radstream.stream_apps.txloop`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from radstream.stream_apps.grouping import AddOutcome, Aggregator, PipelineTimeouts, TimeoutPolicy
from radstream.stream_apps.state_codec import StateRestorer, dirty_records, tombstones
from radstream.stream_apps.txloop import Output, TxLoop

from radstream.events.models import InstanceReceived, SeriesCompleted, StudyCompleted
from radstream.kafka.consumer import Received
from radstream.observability import Observability, kafka_ready
from radstream.pipelines.rules import SeriesFacts, routed
from radstream.pipelines.spec import PipelineSpec, deployment_pipelines
from radstream.settings import Settings

log = logging.getLogger(__name__)


class NotAnInstance(ValueError):
    """A message on the instances topic that is not a usable InstanceReceived."""


def pipeline_timeouts(settings: Settings) -> list[PipelineTimeouts]:
    """The quiet periods of the enabled pipelines whose files set ``completion``."""
    out = []
    for spec in deployment_pipelines(settings):
        c = spec.completion
        if c is None:
            continue

        def routes(attrs: dict[str, Any], spec: PipelineSpec = spec) -> bool:
            return routed(spec, SeriesFacts("", "", 0, attrs)).selected

        out.append(PipelineTimeouts(spec.name, routes, c.series_quiet_s, c.patient_quiet_s, c.max_age_s))
        log.info("pipeline %s: quiet periods %s", spec.name, c.model_dump(exclude_none=True))
    return out


class AggregatorMetrics:
    """``radstream_aggregator_instances_total`` (outcome: new, duplicate, late),
    ``radstream_aggregator_completed_total`` (kind: series, study; reason) and
    ``radstream_aggregator_open`` (kind): what is waiting for its quiet period now."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Counter("radstream_aggregator_instances_total", "instances grouped, by outcome",
                                 ["outcome"], registry=registry)
        self.completed = Counter("radstream_aggregator_completed_total", "series and studies completed",
                                 ["kind", "reason"], registry=registry)
        self.open = Gauge("radstream_aggregator_open", "series and studies open (waiting for a quiet period)",
                          ["kind"], registry=registry)


class AggregatorWorker(TxLoop):
    component = "aggregator"

    def __init__(self, settings: Settings, clock: Callable[[], float] | None = None) -> None:
        a = settings.aggregator
        super().__init__(settings, a.group_id, [settings.topic("instances")],
                         settings.topic("aggregator.changelog"), a.timer_interval_s, a.batch_size,
                         clock=clock or time.time, recovery_grace_s=a.recovery_grace_s)
        self.policy = TimeoutPolicy.from_settings(a, pipeline_timeouts(settings))
        self.aggs: dict[int, Aggregator] = {}
        self.series_topic = settings.topic("series")
        self.studies_topic = settings.topic("studies")
        self.counts: dict[str, int] = {o.value: 0 for o in AddOutcome}
        self.metrics: AggregatorMetrics | None = None
        self._exported = [0 for _ in AddOutcome]  # counts already added to the metrics

    def restore(self, partition: int, records: Iterator[tuple[str, bytes | None]]) -> None:
        r = StateRestorer(self.codec.decode)
        for key, value in records:
            r.apply(key, value)
        agg = Aggregator(self.policy)
        agg.patients = r.patients()
        self.aggs[partition] = agg
        log.info("partition %d: %d patients restored", partition, len(agg.patients))

    def drop(self, partition: int) -> None:
        self.aggs.pop(partition, None)

    def overdue(self, partition: int, now: float) -> bool:
        agg = self.aggs.get(partition)
        return agg is not None and agg.overdue_open(now)

    def process(self, batch: list[Received], now: float) -> Output:
        touched: dict[int, set[str]] = {}
        received: dict[str, bytes] = {}  # SOP UID -> the event's bytes, kept as the changelog entry
        counts = self.counts
        for r in batch:
            m = r.message
            try:
                ev = r.event
                if r.error is not None:
                    raise r.error
                if not isinstance(ev, InstanceReceived):
                    raise NotAnInstance(f"expected InstanceReceived, got {type(ev).__name__}")
                key = m.key()
                if key is not None and (key.decode() if isinstance(key, bytes) else key) != ev.patient_key:
                    raise NotAnInstance("message key is not the event's patient key")
                if not ev.sop_instance_uid or not ev.series_instance_uid or not ev.study_instance_uid:
                    raise NotAnInstance("missing SOP, series or study UID")
            except Exception as exc:  # poison: dead-letter it, never stop
                self.dead_letter(r, exc)
                continue
            partition = m.partition()
            agg = self.aggs.get(partition)
            if agg is None:  # assigned but not restored: cannot happen inside consume(); be safe
                agg = self.aggs[partition] = Aggregator(self.policy)
            outcome = agg.add(ev, now)
            counts[outcome] += 1
            if outcome is not AddOutcome.DUPLICATE:
                received[ev.sop_instance_uid] = m.value()
                keys = touched.get(partition)
                if keys is None:
                    keys = touched[partition] = set()
                keys.add(ev.patient_key)
        out = Output()
        for partition, keys in touched.items():
            agg = self.aggs[partition]
            for key in keys:
                out.changelog += [(partition, k, v) for k, v in dirty_records(agg.patients[key], received)]
        if self.metrics is not None:
            for outcome, before in zip(AddOutcome, self._exported, strict=True):
                self.metrics.instances.labels(outcome.value).inc(counts[outcome] - before)
            self._exported = [counts[o] for o in AddOutcome]
        return out

    def tick(self, partitions: set[int], now: float) -> Output:
        out = Output()
        for partition in partitions:
            agg = self.aggs.get(partition)
            if agg is None:
                continue
            for key in agg.due(now):
                for ev in agg.expire(key, now):
                    assert isinstance(ev, SeriesCompleted | StudyCompleted)
                    is_series = isinstance(ev, SeriesCompleted)
                    out.events.append((self.series_topic if is_series else self.studies_topic, key, ev))
                    if self.metrics is not None:
                        self.metrics.completed.labels("series" if is_series else "study", ev.reason.value).inc()
                p = agg.patients.get(key)
                if p is not None:
                    out.changelog += [(partition, k, v) for k, v in dirty_records(p)]
            for purged in agg.purged.values():
                out.changelog += [(partition, k, v) for k, v in tombstones(purged)]
            agg.purged.clear()
        if self.metrics is not None:
            series, studies = self.open_counts()
            self.metrics.open.labels("series").set(series)
            self.metrics.open.labels("study").set(studies)
        return out

    def open_counts(self) -> tuple[int, int]:
        """(open series, open studies) over all assigned partitions."""
        series = studies = 0
        for agg in self.aggs.values():
            for p in agg.patients.values():
                series += sum(1 for s in p.series.values() if s.open)
                studies += sum(1 for s in p.studies.values() if s.open)
        return series, studies


def run(settings: Settings) -> None:
    worker = AggregatorWorker(settings)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.obs = Observability.for_component(settings, "aggregate")
    worker.metrics = AggregatorMetrics(worker.obs.registry)
    worker.obs.add_readiness_check("kafka", kafka_ready(settings))
    worker.obs.start()
    log.info("aggregator consuming %s (group %s)", worker.inputs[0], worker.group_id)
    try:
        worker.run()
    finally:
        worker.obs.stop()
