"""``radstream infer --pipeline NAME``: one consumer group per pipeline, N replicas scale it.

Every request ends in exactly one InferenceCompleted or InferenceFailed on ``<prefix>.results``
(key = study UID); the offset is committed only after Kafka acknowledged that event. Requests
that fail for a reason that may pass (Triton unavailable) are retried with backoff and become
``InferenceFailed(retriable=True)`` when attempts run out, so the consumer never gets stuck.
Undecodable messages go to the dead-letter topic.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from radstream.consumers.inference.chain import Chain, StageError
from radstream.consumers.operators.base import RetriableError

from radstream import __version__
from radstream.events.models import (
    Event,
    InferenceCompleted,
    InferenceFailed,
    InferenceRequested,
    study_identity,
    utcnow,
)
from radstream.kafka.consumer import EventConsumer, Received
from radstream.kafka.deadletter import DeadLetters
from radstream.kafka.producer import EventProducer
from radstream.observability import Observability, seconds_since
from radstream.pipelines.operators_spec import InferencePipelineSpec, load_inference_pipeline
from radstream.settings import Settings

log = logging.getLogger(__name__)
COMPONENT = "radstream-infer"


def group_id(settings: Settings, pipeline: str) -> str:
    """The pipeline's consumer group; prefixed like the topics, so deployments sharing a cluster stay apart."""
    return f"{settings.kafka.topic_prefix}-infer-{pipeline}"


def result_id_for(request: InferenceRequested) -> str:
    """Stable per request, so a redelivered request yields the same result id (idempotent sinks)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"radstream:result:{request.pipeline}:{request.request_id}"))


def result_fields(req: InferenceRequested, spec: InferencePipelineSpec) -> dict[str, object]:
    """What a result (completed or failed) takes over from its request: ids, pipeline, the study's identity."""
    return {
        "producer": f"{COMPONENT}/{__version__}", "patient_key": req.patient_key, "request_id": req.request_id,
        "study_instance_uid": req.study_instance_uid, "pipeline": spec.name, "pipeline_version": spec.version,
        "shadow": req.shadow, "replay_id": req.replay_id, "result_id": result_id_for(req),
        "last_received_at": req.last_received_at, **study_identity(req), "modality": req.modality,
    }


class InferenceWorker:
    obs: Observability | None = None
    """Set before :meth:`run` to serve /metrics and health (a beat per poll, an outcome per request)."""

    def __init__(self, settings: Settings, pipeline: str, spec: InferencePipelineSpec | None = None,
                 client_id: str | None = None) -> None:
        self.settings = settings
        self.spec = spec or load_inference_pipeline(pipeline, settings.pipelines_dir)
        self.name = pipeline
        self.chain = Chain(settings, self.spec)
        cid = client_id or f"{COMPONENT}-{pipeline}-{uuid.uuid4().hex[:6]}"
        self.producer = EventProducer(settings, cid)
        self.deadletters = DeadLetters(self.producer, COMPONENT)
        self.consumer = EventConsumer(settings, group_id(settings, pipeline), [settings.topic(f"requests.{pipeline}")],
                                      client_id=cid)
        self.results_topic = settings.topic("results")
        self.stop_event = threading.Event()
        self.processed = 0

    # -- one request -------------------------------------------------------------------------
    def handle(self, req: InferenceRequested) -> Event:
        """Run the chain (with retries of retriable failures) and return the result event."""
        attempts = self.settings.inference.max_attempts
        delay = self.settings.triton.backoff_initial_s
        started = utcnow()
        last: StageError | None = None
        for attempt in range(1, attempts + 1):
            try:
                ctx = self.chain.run(req)
            except StageError as exc:
                last = exc
                if isinstance(exc.error, RetriableError) and attempt < attempts and not self.stop_event.is_set():
                    log.warning("request %s: %s; attempt %d/%d, retrying in %.1fs", req.request_id, exc, attempt,
                                attempts, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self.settings.triton.backoff_max_s)
                    continue
                break
            timings = dict(ctx.timings_ms)
            for k in ("triton_compute_ms",):
                if k in ctx.notes:
                    timings[k] = float(ctx.notes[k])
            return InferenceCompleted(
                **result_fields(req, self.spec),  # type: ignore[arg-type]
                model_name=self.spec.model.name, model_version=ctx.model_version or self.spec.model.version,
                series_instance_uids=[s.series_instance_uid for s in req.series],
                measurements=ctx.measurements, detections=ctx.detections, seg_uri=ctx.seg_uri, sr_uri=ctx.sr_uri,
                blinding_hash=ctx.blinding_hash, timings_ms=timings, started_at=started,
            )
        assert last is not None
        retriable = isinstance(last.error, RetriableError)
        log.error("request %s failed at %s (%s, retriable=%s)", req.request_id, last.stage,
                  type(last.error).__name__, retriable)
        return InferenceFailed(
            **result_fields(req, self.spec),  # type: ignore[arg-type]
            model_name=self.spec.model.name, model_version=self.spec.model.version, stage=last.stage,
            reason=f"{type(last.error).__name__}: {last.error}"[:2000], retriable=retriable, attempts=attempt,
        )

    def process(self, received: Received) -> None:
        """Handle one message: result or dead letter acknowledged by Kafka, then the offset committed."""
        ev = received.event
        if received.error is not None or not isinstance(ev, InferenceRequested):
            err = received.error or TypeError(f"expected InferenceRequested, got {type(ev).__name__}")
            self.deadletters.from_message(received, err)
        else:
            t0 = time.monotonic()
            result = self.handle(ev)
            self.producer.send_sync(self.results_topic, ev.study_instance_uid, result)
            if self.obs is not None:
                self.obs.consumer_metrics().outcome(
                    self.name, "completed" if isinstance(result, InferenceCompleted) else "failed",
                    seconds=time.monotonic() - t0,
                    end_to_end_s=seconds_since(ev.last_received_at))
        # a commit lost to a rebalance is not an error: the partition's new owner gets the request
        # again (at least once; the same result id, stored once by the sink)
        self.consumer.commit([received])
        self.processed += 1
        if self.obs is not None:
            m = self.obs.consumer_metrics()
            m.consumed_event(received.topic)
            if received.error is not None or not isinstance(ev, InferenceRequested):
                m.deadlettered()

    # -- loop -------------------------------------------------------------------------------
    def run(self, max_requests: int | None = None) -> None:
        log.info("inference worker for pipeline %s (model %s) consuming %s", self.name, self.spec.model.name,
                 self.settings.topic(f"requests.{self.name}"))
        try:
            while not self.stop_event.is_set():
                if self.obs is not None:
                    self.obs.beat()
                for r in self.consumer.poll_batch(1, self.settings.inference.poll_timeout_s):
                    self.process(r)
                if max_requests is not None and self.processed >= max_requests:
                    break
        finally:
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.chain.close()
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)
