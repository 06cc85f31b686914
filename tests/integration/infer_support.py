"""Shared by the inference tests and load tests: a real Triton (pytriton, CPU) on free ports,
settings pointing at it, and a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from radstream.settings import Settings


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The reference models behind a real Triton server for the whole session."""
    from radstream.devenv.process import free_port
    from radstream.devenv.triton import TritonServer

    server = TritonServer(tmp_path_factory.mktemp("triton"), http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), wait_ms=50.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def with_triton(settings: Settings, server: object, **triton: object) -> Settings:
    from radstream.devenv.triton import TritonServer

    assert isinstance(server, TritonServer)
    t = settings.triton.model_copy(update={"host": server.host, "http_port": server.http_port,
                                           "grpc_port": server.grpc_port, **triton})
    return settings.model_copy(update={"triton": t})


class WorkerThread:
    """``radstream infer`` in a thread of the test process (same code path as the CLI)."""

    def __init__(self, settings: Settings, pipeline: str) -> None:
        from radstream.consumers.inference.worker import InferenceWorker

        self.worker = InferenceWorker(settings, pipeline)
        self.thread = threading.Thread(target=self.worker.run, name=f"infer-{pipeline}", daemon=True)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(30)


def synth_dir(tmp: Path) -> Path:
    return tmp / "synth"
