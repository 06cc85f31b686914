"""Inference workers off the live path: shadow models and replays, each in its own consumer group.

They reuse the live worker's code (chain, retries, one result per request, commit after the
result is acknowledged) and differ only in what they consume and how results are tagged:

* shadow: the live requests topic, group ``<prefix>-shadow-<pipeline>-v<V>``, model version V;
  results carry ``shadow=True`` and their own request/result ids, so readers never see them;
* replay: the pipeline's replay topic, group ``<prefix>-replay-<pipeline>``; each request names
  the model version to run (a chain per version), results carry the ``replay_id`` and are tagged
  shadow too: off the live path, never on readers' worklists nor the result of record of a timepoint.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

from radstream.consumers.inference.chain import Chain
from radstream.consumers.inference.worker import InferenceWorker
from radstream.events.models import Event, InferenceRequested
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.deadletter import DeadLetters
from radstream.kafka.producer import EventProducer
from radstream.pipelines.operators_spec import InferencePipelineSpec, load_inference_pipeline
from radstream.settings import Settings


def shadow_group(settings: Settings, pipeline: str, model_version: str) -> str:
    return f"{settings.kafka.topic_prefix}-shadow-{pipeline}-v{model_version}"


def replay_group(settings: Settings, pipeline: str) -> str:
    return f"{settings.kafka.topic_prefix}-replay-{pipeline}"


def replay_topic(settings: Settings, pipeline: str) -> str:
    return settings.topic(f"replay.{pipeline}")


def with_model_version(spec: InferencePipelineSpec, version: str) -> InferencePipelineSpec:
    return spec.model_copy(update={"model": spec.model.model_copy(update={"version": version})})


class OffPathWorker(InferenceWorker):
    """An :class:`InferenceWorker` on its own group and topic (never joins the live group)."""

    def __init__(self, settings: Settings, pipeline: str, *, group: str, topic: str, component: str,
                 model_version: str | None = None, shadow: bool = False, client_id: str | None = None) -> None:
        # deliberately not super().__init__(): that subscribes the live group and would rebalance it
        base = load_inference_pipeline(pipeline, settings.pipelines_dir)
        self.settings = settings
        self.spec = with_model_version(base, model_version) if model_version else base
        self.name = pipeline
        self.shadow = shadow
        self.group = group
        self._base_spec = base
        self._chains: dict[str, Chain] = {}
        self.chain = self._chain_for(self.spec.model.version)
        cid = client_id or f"{component}-{pipeline}-{uuid.uuid4().hex[:6]}"
        self.producer = EventProducer(settings, cid)
        self.deadletters = DeadLetters(self.producer, component)
        self.consumer = EventConsumer(settings, group, [topic], client_id=cid)
        self.results_topic = settings.topic("results")
        self.stop_event = threading.Event()
        self.processed = 0

    def _chain_for(self, version: str) -> Chain:
        if version not in self._chains:
            self._chains[version] = Chain(self.settings, with_model_version(self._base_spec, version))
        return self._chains[version]

    def handle(self, req: InferenceRequested) -> Event:
        if self.shadow:
            v = self.spec.model.version
            req = dataclasses.replace(req, shadow=True, model_version=v,
                                      request_id=f"{req.request_id}:shadow:v{v}")
        else:  # replay: run the version the request names; its results stay off the readers' worklists
            req = dataclasses.replace(req, shadow=True)
            self.spec = with_model_version(self._base_spec, req.model_version)
            self.chain = self._chain_for(req.model_version)
        result: Event = super().handle(req)
        return result

    def close(self) -> None:
        for chain in self._chains.values():
            if chain is not self.chain:
                chain.close()
        super().close()


def shadow_worker(settings: Settings, pipeline: str, model_version: str) -> OffPathWorker:
    return OffPathWorker(settings, pipeline, group=shadow_group(settings, pipeline, model_version),
                         topic=settings.topic(f"requests.{pipeline}"), component="radstream-shadow",
                         model_version=model_version, shadow=True)


def replay_worker(settings: Settings, pipeline: str) -> OffPathWorker:
    from radstream.ops.replay import ensure_replay_topic

    ensure_replay_topic(settings, pipeline)
    return OffPathWorker(settings, pipeline, group=replay_group(settings, pipeline),
                         topic=replay_topic(settings, pipeline), component="radstream-replay")
