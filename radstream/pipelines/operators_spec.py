"""The inference part of a pipeline file: the operator chain and the Triton model.

A pipeline file (``pipelines/<name>.yaml``) holds, besides routing and series selection
(read by the dispatcher), the keys read here::

    model:                      # the Triton model and its tensors
      name: brain_lesion_ref
      version: "1"              # "" = the server's latest
      inputs: [image]           # optional: checked against the server's metadata
      outputs: [labels]
      protocol: grpc            # optional: grpc | http (default settings.triton.protocol)
      timeout_s: 60
    operators:                  # run in order; each has an ``op`` and its parameters
      - op: load_series
      - op: normalise
        params: {window: [0, 1200]}
      - op: triton_infer
      ...
    request_timeout_s: 600

A worker loads its file through :func:`radstream.pipelines.spec.load_pipeline_file` first, so an
unknown key anywhere in the file stops it as it stops the dispatcher. Adding a pipeline that reuses
operators is a new file, no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PIPELINES_DIR = PROJECT_ROOT / "pipelines"


class OperatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str = Field(description="operator name, e.g. load_series, triton_infer, seg_writer")
    name: str | None = Field(None, description="label for timings (default: op)")
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.op


class TritonModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: str = ""
    inputs: list[str] = Field(default_factory=list, description="expected input tensors (checked at start)")
    outputs: list[str] = Field(default_factory=list, description="expected output tensors")
    protocol: Literal["grpc", "http"] | None = None
    timeout_s: float | None = Field(None, gt=0)
    reference_model: bool = Field(False, description="true for the bundled reference models (not clinical)")


class InferencePipelineSpec(BaseModel):
    """What an inference worker needs from a pipeline file (checked whole by ``PipelineSpec`` first)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str = "1"
    description: str = ""
    model: TritonModelSpec
    operators: list[OperatorSpec] = Field(min_length=1)
    blinded: bool = Field(False, description="a blinding operator runs before the writers (added if not listed)")
    qc_required: bool = False
    request_timeout_s: float = Field(600.0, gt=0, description="a request running longer fails (retriable)")

    WRITERS: ClassVar[tuple[str, ...]] = ("seg_writer", "sr_writer")

    def model_post_init(self, __context: Any) -> None:
        # `blinded: true` is what blinds: the blinding operator runs before the first writer unless listed
        ops = [o.op for o in self.operators]
        if self.blinded and "blinding" not in ops:
            at = next((i for i, op in enumerate(ops) if op in self.WRITERS), len(ops))
            self.operators.insert(at, OperatorSpec(op="blinding"))


def pipelines_dir(configured: Path | None = None) -> Path:
    return configured or DEFAULT_PIPELINES_DIR


def load_inference_pipeline(name: str, directory: Path | None = None) -> InferencePipelineSpec:
    """Read and validate ``<directory>/<name>.yaml``."""
    from radstream.pipelines.spec import load_pipeline_file

    path = pipelines_dir(directory) / f"{name}.yaml"
    load_pipeline_file(path)  # the whole file: unknown keys, rules, consistency
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return InferencePipelineSpec.model_validate(data)
