"""Two-network brain extraction as deepbet does it, with both networks served by Triton.

``brain_extraction`` reorients the volume to deepbet's canonical axes (x, y, z to R, A, S), resizes it
(nearest-exact) to the bounding-box network's input, windows it at two percentiles and standardises it
as deepbet was trained, runs the bounding-box network (``bbox_model``), keeps its largest component
and crops the volume to the box plus a margin, resizes the crop to the segmentation network's input
(the pipeline's ``model``), runs it, pastes the probabilities back, thresholds, keeps the largest
component and fills holes. The mask comes back onto the source grid as ``ctx.labels`` (value
``label``), ready for ``volumes``, ``seg_writer`` and ``sr_writer``. The numerics are
:mod:`radstream.models.deepbet`'s port of deepbet's ``run_model``/``postprocess`` (Dice 0.99999
against deepbet's own ``run_bet`` on Colin27).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from radstream.consumers.operators.base import Context, OperatorError
from radstream.consumers.operators.preprocess import to_sitk
from radstream.consumers.operators.triton_infer import ModelMeta, TritonInference, TritonParams, TritonUnavailable

from radstream.models import deepbet


class BrainExtractionParams(TritonParams):
    bbox_model: str = Field(deepbet.BBOX_MODEL, description="Triton model that finds the brain's bounding box")
    bbox_version: str = ""
    small_shape: tuple[int, int, int] = (128, 128, 128)
    shape: tuple[int, int, int] = (256, 256, 256)
    margin: float = Field(0.1, ge=0.0, le=1.0, description="bounding box margin, a fraction of its size per side")
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    label: int = Field(1, ge=1, le=255)


class BrainExtraction(TritonInference):
    op = "brain_extraction"
    Params = BrainExtractionParams

    _bbox_meta: ModelMeta | None = None

    def bbox_meta(self) -> ModelMeta:
        if self._bbox_meta is None:
            p: BrainExtractionParams = self.params

            def fetch() -> ModelMeta:
                if not self.client.ready(p.bbox_model, p.bbox_version):
                    raise TritonUnavailable(f"model {p.bbox_model} is not ready")
                return self.client.metadata(p.bbox_model, p.bbox_version)

            meta = self._with_retries("readiness/metadata", fetch)
            for m, shape in ((meta, p.small_shape), (self.model_meta(), p.shape)):
                if len(m.inputs) != 1 or [int(v) for v in m.inputs[0].shape[-3:]] != list(shape):
                    raise OperatorError(f"model {m.name}: input {[(t.name, t.shape) for t in m.inputs]} does not "
                                        f"take the {shape} volume this pipeline file gives it")
            self._bbox_meta = meta
        return self._bbox_meta

    def _net(self, meta: ModelMeta, timings: dict[str, float], key: str) -> Any:
        name, out = meta.inputs[0].name, meta.outputs[0].name

        def run(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
            t0 = time.perf_counter()
            res = self._with_retries("infer", lambda: self.client.infer(meta, {name: x}))
            timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1000.0
            return np.asarray(res[out])

        return run

    def run(self, ctx: Context) -> None:
        import SimpleITK as sitk

        p: BrainExtractionParams = self.params
        if ctx.volume is None:
            raise OperatorError("brain_extraction needs a volume (load_series kind=volume)")
        bbox_meta, seg_meta = self.bbox_meta(), self.model_meta()
        ctx.model_version = seg_meta.version
        src = to_sitk(ctx.volume, ctx.volume.array.astype(np.float32))
        assert isinstance(src, sitk.Image)
        ras = sitk.DICOMOrient(src, "RAS")
        x = np.transpose(sitk.GetArrayFromImage(ras), (2, 1, 0))  # (x, y, z) to R, A, S
        timings: dict[str, float] = {}
        try:
            prob, box = deepbet.brain_probability(
                x, self._net(bbox_meta, timings, "triton_bbox_ms"), self._net(seg_meta, timings, "triton_brain_ms"),
                small_shape=p.small_shape, shape=p.shape, margin=p.margin)
        except deepbet.DeepbetError as exc:
            raise OperatorError(f"brain_extraction: {exc}") from exc
        mask = deepbet.brain_mask(prob, box, p.threshold)
        out = sitk.GetImageFromArray(np.transpose(mask, (2, 1, 0)).astype(np.uint8) * np.uint8(p.label))
        out.CopyInformation(ras)
        back = sitk.Resample(out, src, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        ctx.labels = np.asarray(sitk.GetArrayFromImage(back))
        ctx.notes["bbox_ras"] = [[s.start, s.stop] for s in box]
        ctx.timings_ms.update(timings)
