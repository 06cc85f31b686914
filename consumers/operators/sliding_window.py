"""Sliding-window inference for volumes larger than a model's input, and argmax to a label map.

``sliding_window_infer`` cuts the model input into patches of the model's size with an overlap,
sends them to Triton a batch at a time (one request per ``batch_size`` patches, the batch as the
first tensor dimension), and blends the overlapping outputs with a Gaussian importance map (or
uniformly), as MONAI's ``SlidingWindowInferer`` does. A model that returns class probabilities
(``[B, C, *patch]``) is blended as is; one that returns a label map (``[B, *patch]``) is blended as one-hot
votes. The result is the argmax label map (uint8) in ``ctx.model_outputs`` (what ``triton_infer``
gives for a whole-volume model), with the blended probabilities kept when asked for.
``argmax`` turns a whole-volume probability output ``[C, ...]`` (or ``[1, C, ...]``) into labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field
from radstream.consumers.operators.base import Context, Operator, OperatorError, Params
from radstream.consumers.operators.triton_infer import TritonInference, TritonParams


class SlidingWindowParams(TritonParams):
    patch_size: tuple[int, int, int] = Field(description="model input (slices, rows, columns)")
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of a patch shared with its neighbour")
    batch_size: int = Field(4, ge=1, description="patches per Triton request")
    blend: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(0.125, gt=0.0, description="Gaussian sigma as a fraction of the patch size")
    model_output: Literal["probabilities", "labels"] = "probabilities"
    num_classes: int = Field(2, ge=2, description="classes, for a model that returns labels")
    channel_axis: bool = Field(True, description="the model takes [B, 1, *patch] (False: [B, *patch])")
    pad_value: float | None = Field(None, description="pads volumes smaller than a patch (default: the minimum)")
    keep_probabilities: bool = False


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """First indices of patches covering ``size`` voxels; the last patch ends at the edge."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def importance_map(patch: tuple[int, int, int], blend: str, sigma_scale: float) -> npt.NDArray[np.float32]:
    if blend == "constant":
        return np.ones(patch, dtype=np.float32)
    axes = []
    for n in patch:
        centre, sigma = (n - 1) / 2.0, max(sigma_scale * n, 1e-6)
        axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
    w = np.einsum("i,j,k->ijk", *axes).astype(np.float32)
    w /= w.max()
    positive = w[w > 0]
    floor = float(positive.min()) if positive.size else 1.0
    out: npt.NDArray[np.float32] = np.maximum(w, max(floor, 1e-3)).astype(np.float32)
    return out  # no voxel without weight at the patch corners


def sliding_window(
    x: npt.NDArray[Any], patch: tuple[int, int, int], infer: Callable[[npt.NDArray[np.float32]], npt.NDArray[Any]],
    *, overlap: float = 0.5, batch_size: int = 4, blend: str = "gaussian", sigma_scale: float = 0.125,
    model_output: str = "probabilities", num_classes: int = 2, channel_axis: bool = True,
    pad_value: float | None = None,
) -> tuple[npt.NDArray[np.float32], int]:
    """Blended class probabilities ``[C, *x.shape]`` and the number of ``infer`` calls (one per batch)."""
    if x.ndim != 3:
        raise OperatorError(f"sliding window needs a 3-D input, got shape {x.shape}")
    shape = x.shape
    padded = tuple(max(n, p) for n, p in zip(shape, patch, strict=True))
    if padded != shape:
        fill = float(np.min(x)) if pad_value is None else pad_value
        xp = np.full(padded, fill, dtype=np.float32)
        xp[: shape[0], : shape[1], : shape[2]] = x
    else:
        xp = np.asarray(x, dtype=np.float32)
    weight = importance_map(patch, blend, sigma_scale)
    corners = list(itertools.product(*(patch_starts(n, p, overlap) for n, p in zip(padded, patch, strict=True))))
    acc: npt.NDArray[np.float32] | None = None
    norm = np.zeros(padded, dtype=np.float32)
    calls = 0
    for b in range(0, len(corners), batch_size):
        batch = corners[b: b + batch_size]
        boxes = [tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in batch]
        tiles = np.stack([xp[box] for box in boxes])
        out = np.asarray(infer(tiles[:, None] if channel_axis else tiles))
        calls += 1
        if model_output == "labels":
            labels = out[:, 0] if out.ndim == 5 else out
            if labels.shape != (len(batch), *patch):
                raise OperatorError(f"model returned labels of shape {out.shape} for {len(batch)} patches {patch}")
            probs = np.stack([(labels == c) for c in range(num_classes)], axis=1).astype(np.float32)
        else:
            if out.ndim != 5 or out.shape[0] != len(batch) or out.shape[2:] != patch:
                raise OperatorError(f"model returned {out.shape}; expected [{len(batch)}, C, *{patch}]")
            probs = out.astype(np.float32)
        if acc is None:
            acc = np.zeros((probs.shape[1], *padded), dtype=np.float32)
        for k, box in enumerate(boxes):
            acc[(slice(None), *box)] += probs[k] * weight
            norm[box] += weight
    assert acc is not None
    acc /= norm[None]
    return acc[:, : shape[0], : shape[1], : shape[2]], calls


def argmax_uint8(probs: npt.NDArray[Any], axis: int = 0, chunk: int = 16) -> npt.NDArray[np.uint8]:
    """The class axis' argmax as uint8, a slab of ``chunk`` along the next axis at a time: numpy's argmax
    gives int64, 8 bytes a voxel (840 MB for a 512x512x400 volume) where the label map needs one."""
    a = np.moveaxis(probs, axis, 0)
    if a.shape[0] > 255:
        raise OperatorError(f"argmax: {a.shape[0]} classes do not fit uint8")
    if a.ndim == 1:
        return np.asarray(np.argmax(a), dtype=np.uint8)
    out = np.empty(a.shape[1:], dtype=np.uint8)
    for i in range(0, a.shape[1], chunk):
        out[i: i + chunk] = np.argmax(a[:, i: i + chunk], axis=0)
    return out


class SlidingWindowInference(TritonInference):
    op = "sliding_window_infer"
    Params = SlidingWindowParams  # type: ignore[assignment]  # a TritonParams with the window's settings

    def run(self, ctx: Context) -> None:
        p: SlidingWindowParams = self.params
        if not ctx.model_inputs:
            raise OperatorError("sliding_window_infer: no model input (load_series first)")
        meta = self.model_meta()
        ctx.model_version = meta.version
        name, out_name = meta.inputs[0].name, meta.outputs[0].name

        def infer(batch: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
            res = self._with_retries("infer", lambda: self.client.infer(meta, {name: batch}))
            return np.asarray(res[out_name])

        outputs, calls = [], 0
        for x in ctx.model_inputs:
            probs, n = sliding_window(
                np.asarray(x), p.patch_size, infer, overlap=p.overlap, batch_size=p.batch_size, blend=p.blend,
                sigma_scale=p.sigma_scale, model_output=p.model_output, num_classes=p.num_classes,
                channel_axis=p.channel_axis, pad_value=p.pad_value)
            calls += n
            outputs.append(argmax_uint8(probs))
            if p.keep_probabilities:
                ctx.notes.setdefault("probabilities", []).append(probs)
        ctx.notes["triton_requests"] = calls
        ctx.model_outputs = outputs


class ArgmaxParams(Params):
    channel_axis: int = Field(0, description="class axis of the model output (after any batch axis is dropped)")


class Argmax(Operator):
    """Class probabilities ``[C, ...]`` (a leading batch axis of 1 is dropped) to a uint8 label map."""

    op = "argmax"
    Params = ArgmaxParams

    def run(self, ctx: Context) -> None:
        if not ctx.model_outputs:
            raise OperatorError("argmax: no model output (triton_infer first)")
        out = []
        for y in ctx.model_outputs:
            a = np.asarray(y)
            if a.ndim >= 5 and a.shape[0] == 1:
                a = a[0]
            out.append(argmax_uint8(a, axis=self.params.channel_axis))
        ctx.model_outputs = out
