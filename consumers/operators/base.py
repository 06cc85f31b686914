"""What every operator shares: the per-request context, the operator protocol, error kinds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from pydicom.dataset import Dataset

from radstream.events.models import Detection, InferenceRequested, Measurement
from radstream.pipelines.operators_spec import InferencePipelineSpec
from radstream.settings import Settings
from radstream.store import ContentStore


class OperatorError(Exception):
    """A request that cannot succeed as it is (bad input, wrong series): not retried."""


class RetriableError(Exception):
    """A failure that may pass on its own (server unavailable, timeout): the request is retried."""


@dataclass
class Volume:
    """A 3-D series in patient space: array (slices, rows, columns) in modality units, sorted along the normal."""

    array: npt.NDArray[Any]
    spacing: tuple[float, float, float]  # (column x, row y, slice z) mm, SimpleITK order
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, SimpleITK order
    datasets: list[Dataset]  # source instances in array order


@dataclass
class Image2D:
    array: npt.NDArray[Any]  # rows x columns, modality units
    dataset: Dataset


@dataclass
class Context:
    """Everything one request's chain reads and writes."""

    settings: Settings
    request: InferenceRequested
    pipeline: InferencePipelineSpec
    store: ContentStore
    volume: Volume | None = None
    images: list[Image2D] = field(default_factory=list)
    # model input(s) in the model's geometry (one per image for 2-D pipelines)
    model_inputs: list[npt.NDArray[Any]] = field(default_factory=list)
    # model outputs, same order
    model_outputs: list[npt.NDArray[Any]] = field(default_factory=list)
    # label map in the source geometry (slices, rows, columns) for volume pipelines
    labels: npt.NDArray[Any] | None = None
    resampled: Any = None  # SimpleITK reference image when the model grid differs from the source
    measurements: list[Measurement] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    seg_uri: str | None = None
    seg_dataset: Dataset | None = None
    sr_uri: str | None = None
    blinding_hash: str | None = None
    model_version: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def label_names(self, params: dict[Any, Any]) -> dict[int, str]:
        return {int(k): str(v) for k, v in params.items()}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Operator:
    """One job. ``run`` mutates the context; ``close`` frees clients. Built from the file's params."""

    op: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Params

    def __init__(self, settings: Settings, pipeline: InferencePipelineSpec, params: dict[str, Any]) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.params: Any = self.Params.model_validate(params)

    def run(self, ctx: Context) -> None:
        raise NotImplementedError

    def close(self) -> None:
        return None
