"""`radstream infer --pipeline NAME`: an inference worker (run N of them to scale a pipeline)."""

from __future__ import annotations

import logging
import signal
from typing import Annotated

import typer

from radstream.cli.context import settings


def infer(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="pipeline file name (pipelines/NAME.yaml)")],
) -> None:
    """Consume radstream.requests.NAME and emit one InferenceCompleted/InferenceFailed per request."""
    from radstream.consumers.inference.worker import InferenceWorker
    from radstream.observability import Observability, kafka_ready, triton_ready

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    s = settings()
    worker = InferenceWorker(s, pipeline)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.obs = Observability.for_component(s, "infer", labels={"pipeline": pipeline})
    worker.obs.add_readiness_check("kafka", kafka_ready(s))
    worker.obs.add_readiness_check("triton", triton_ready(s))
    worker.obs.start()
    try:
        worker.run()
    finally:
        worker.obs.stop()
