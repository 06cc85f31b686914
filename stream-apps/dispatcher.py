"""The dispatcher worker (``radstream dispatch``): SeriesCompleted/StudyCompleted -> InferenceRequested.

Same transactional loop as the aggregator; its state (latest series per study, studies waiting
for their series, requests already made) lives in ``<prefix>.dispatcher.changelog``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

from radstream.stream_apps.dispatch_logic import DispatchState
from radstream.stream_apps.txloop import Output, TxLoop

from radstream.events.models import SeriesCompleted, StudyCompleted
from radstream.kafka.consumer import Received
from radstream.kafka.topics import create_topics
from radstream.observability import Observability, kafka_ready
from radstream.pipelines.spec import PipelineSpec, deployment_pipelines
from radstream.settings import Settings

log = logging.getLogger(__name__)


class NotACompletion(ValueError):
    """A message on the series/studies topics that is neither SeriesCompleted nor StudyCompleted."""


class DispatcherWorker(TxLoop):
    component = "dispatcher"

    def __init__(self, settings: Settings, pipelines: list[PipelineSpec] | None = None) -> None:
        self.pipelines = pipelines if pipelines is not None else deployment_pipelines(settings)
        super().__init__(settings, settings.dispatcher.group_id, [settings.topic("series"), settings.topic("studies")],
                         settings.topic("dispatcher.changelog"), timer_interval_s=60.0,
                         fill_batches=False)  # a completion becomes its requests at once
        self.retain_s = settings.aggregator.retain_closed_s
        self.states: dict[int, DispatchState] = {}
        self.requested = 0

    def restore(self, partition: int, records: Iterator[tuple[str, bytes | None]]) -> None:
        st = DispatchState(self.pipelines, self.codec)
        for key, value in records:
            st.apply(key, value)
        self.states[partition] = st

    def drop(self, partition: int) -> None:
        self.states.pop(partition, None)

    def process(self, batch: list[Received], now: float) -> Output:
        out = Output()
        for r in batch:
            try:
                if r.error is not None:
                    raise r.error
                ev = r.event
                if not isinstance(ev, SeriesCompleted | StudyCompleted):
                    raise NotACompletion(f"unexpected {type(ev).__name__}")
            except Exception as exc:
                self.dead_letter(r, exc)
                continue
            state = self.states.setdefault(r.partition, DispatchState(self.pipelines, self.codec))
            d = state.on_series(ev) if isinstance(ev, SeriesCompleted) else state.on_study(ev)
            out.changelog += [(r.partition, k, v) for k, v in d.changelog]
            for req in d.requests:
                out.events.append((self.settings.topic(f"requests.{req.pipeline}"), req.patient_key, req))
            self.requested += len(d.requests)
        return out

    def tick(self, partitions: set[int], now: float) -> Output:
        """Forget studies older than the aggregator's retention (late data can no longer re-open them)."""
        out = Output()
        for p in partitions:
            state = self.states.get(p)
            if state is not None:
                out.changelog += [(p, k, v) for k, v in state.purge(now - self.retain_s)]
        return out


def run(settings: Settings) -> None:
    pipelines = deployment_pipelines(settings)
    create_topics(settings, pipelines=[p.name for p in pipelines])
    worker = DispatcherWorker(settings, pipelines)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.obs = Observability.for_component(settings, "dispatch")
    worker.obs.add_readiness_check("kafka", kafka_ready(settings))
    worker.obs.start()
    log.info("dispatcher: pipelines %s", ", ".join(f"{p.name}@{p.version}" for p in pipelines))
    try:
        worker.run()
    finally:
        worker.obs.stop()
