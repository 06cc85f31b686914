"""Shared by the shadow, replay and scaling tests: a second Triton serving the reference models as
version 2, synthetic liver requests, off-path workers in threads, results read from the topic."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radstream.events.models import Event, InferenceCompleted, InferenceFailed, InferenceRequested
from radstream.kafka.consumer import EventConsumer
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore
from radstream.synth import SynthConfig, synthesize
from radstream.synth.requests import request_for_study
from tests.waiting import eventually


@pytest.fixture(scope="session")
def triton_server_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The same reference models as version 2 (pytriton serves one version of a model per server)."""
    from radstream.devenv.process import free_port
    from radstream.devenv.triton import TritonServer

    server = TritonServer(tmp_path_factory.mktemp("triton-v2"), http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), wait_ms=50.0, model_version=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def liver_requests(settings: Settings, root: Path, patients: int, seed: int = 21) -> list[InferenceRequested]:
    """One real request per synthetic liver CT study (bytes in the store, as the dispatcher makes them)."""
    truth = synthesize(root, SynthConfig(seed=seed, brain_patients=0, liver_patients=patients, hip_patients=0,
                                         timepoints=1))
    store = ContentStore(settings.store_root)
    model = load_inference_pipeline("liver").model.name
    return [request_for_study(st, root, store, settings.site_secret.get_secret_value().encode(), pipeline="liver",
                              model_name=model) for st in truth["studies"]]


Result = InferenceCompleted | InferenceFailed


class Results:
    """Everything on the results topic, from the beginning (own group)."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = EventConsumer(settings, f"test-results-{uuid.uuid4().hex[:8]}", [settings.topic("results")])
        self.events: list[Result] = []

    def until(self, pred: Any, timeout: float, what: str) -> list[Result]:
        def poll() -> list[Result] | None:
            for r in self.consumer.poll_batch(100, 0.5):
                if isinstance(r.event, InferenceCompleted | InferenceFailed):
                    self.events.append(r.event)
            return self.events if pred(self.events) else None

        return eventually(poll, timeout=timeout, interval=0.05, what=what)

    def settle(self, seconds: float = 2.0) -> list[Result]:
        """Whatever else arrives in ``seconds`` (to catch duplicates)."""
        import time

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for r in self.consumer.poll_batch(100, 0.3):
                if isinstance(r.event, InferenceCompleted | InferenceFailed):
                    self.events.append(r.event)
        return self.events

    def close(self) -> None:
        self.consumer.close()


class Running:
    """Any worker with ``run()``/``stop()`` (live, shadow, replay) in a thread of the test process."""

    def __init__(self, worker: Any, name: str) -> None:
        self.worker = worker
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop"
        assert not self.errors, self.errors


def by_request(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(str(getattr(e, "request_id", "")), []).append(e)
    return out


def offsets_on(settings: Settings, group: str, topic: str) -> dict[tuple[str, int], int]:
    """A group's committed offsets on one topic (group names are session-wide; topics are per test)."""
    from radstream.ops.status import committed_offsets

    return {k: v for k, v in committed_offsets(settings, group).items() if k[0] == topic}
