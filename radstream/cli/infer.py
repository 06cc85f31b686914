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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    worker = InferenceWorker(settings(), pipeline)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()
