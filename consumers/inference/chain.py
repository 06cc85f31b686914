"""A pipeline's operator chain, built once from its file and run per request."""

from __future__ import annotations

import time

from radstream.consumers.operators.base import Context, Operator
from radstream.consumers.operators.registry import OPERATORS

from radstream.events.models import InferenceRequested
from radstream.pipelines.operators_spec import InferencePipelineSpec
from radstream.settings import Settings
from radstream.store import ContentStore


class UnknownOperator(ValueError):
    pass


class StageError(Exception):
    """An operator failed: which one, and the original error (``__cause__``)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


class Chain:
    def __init__(self, settings: Settings, spec: InferencePipelineSpec, store: ContentStore | None = None) -> None:
        self.settings = settings
        self.spec = spec
        self.store = store or ContentStore.from_settings(settings)
        self.operators: list[tuple[str, Operator]] = []
        for op in spec.operators:
            cls = OPERATORS.get(op.op)
            if cls is None:
                raise UnknownOperator(f"pipeline {spec.name}: unknown operator {op.op!r} (known: {sorted(OPERATORS)})")
            self.operators.append((op.label, cls(settings, spec, op.params)))

    def run(self, request: InferenceRequested) -> Context:
        ctx = Context(self.settings, request, self.spec, self.store)
        start = time.perf_counter()
        for label, op in self.operators:
            t0 = time.perf_counter()
            try:
                op.run(ctx)
            except Exception as exc:
                raise StageError(label, exc) from exc
            finally:
                ctx.timings_ms[label] = round((time.perf_counter() - t0) * 1000.0, 3)
        ctx.timings_ms["total"] = round((time.perf_counter() - start) * 1000.0, 3)
        return ctx

    def close(self) -> None:
        for _, op in self.operators:
            op.close()
