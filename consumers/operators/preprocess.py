"""Resample to a model grid (SimpleITK) and intensity normalisation."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator
from radstream.consumers.operators.base import Context, Operator, OperatorError, Params, Volume


def to_sitk(volume: Volume, array: npt.NDArray[Any] | None = None) -> object:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume.array if array is None else array)
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    return img


class ResampleParams(Params):
    spacing: tuple[float, float, float] = Field(description="target spacing (x, y, z) mm")


class Resample(Operator):
    """Linear resampling of the volume onto a grid of the given spacing; labels come back (nearest
    neighbour) onto the source grid in :func:`labels_to_source`."""

    op = "resample"
    Params = ResampleParams

    def run(self, ctx: Context) -> None:
        import SimpleITK as sitk

        if ctx.volume is None:
            raise OperatorError("resample needs a volume (load_series kind=volume)")
        src = to_sitk(ctx.volume)
        assert isinstance(src, sitk.Image)
        new_spacing = self.params.spacing
        size = [max(1, round(n * s / t)) for n, s, t in zip(src.GetSize(), src.GetSpacing(), new_spacing, strict=True)]
        # keep the physical extent centred: first voxel centre shifts by half the spacing change
        ref = sitk.Image(size, sitk.sitkFloat32)
        ref.SetSpacing(new_spacing)
        ref.SetDirection(src.GetDirection())
        d = np.array(src.GetDirection()).reshape(3, 3)
        shift = d @ ((np.array(new_spacing) - np.array(src.GetSpacing())) / 2.0)
        ref.SetOrigin(tuple(np.array(src.GetOrigin()) + shift))
        out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(ctx.volume.array.min()))
        ctx.resampled = out
        ctx.model_inputs = [sitk.GetArrayFromImage(out).astype(np.float32)]


def labels_to_source(ctx: Context, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A label map from the model grid back onto the source grid (nearest neighbour)."""
    if ctx.resampled is None:
        return labels
    import SimpleITK as sitk

    assert ctx.volume is not None
    lab = sitk.GetImageFromArray(labels.astype(np.uint8))
    lab.CopyInformation(ctx.resampled)
    ref = to_sitk(ctx.volume)
    assert isinstance(ref, sitk.Image)
    out = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return np.asarray(sitk.GetArrayFromImage(out))


class NormaliseParams(Params):
    mode: Literal["window", "zscore", "percentile"] = Field(
        "window", description="window: (x - low) / (high - low); zscore: (x - mean) / std; percentile: the window "
                              "between two percentiles of the volume")
    window: tuple[float, float] | None = Field(None, description="mode window: modality values mapped to 0 and 1")
    percentiles: tuple[float, float] = Field((0.5, 99.5), description="mode percentile: the window's percentiles")
    nonzero: bool = Field(False, description="zscore/percentile statistics over voxels != 0 only (MR background)")
    clip: tuple[float, float] | None = Field(None, description="clip the normalised values to this range")
    affine: tuple[float, float] | None = Field(None, description="then y * a + b (e.g. a network's training scale)")

    @model_validator(mode="after")
    def _check(self) -> NormaliseParams:
        if self.mode == "window" and self.window is None:
            raise ValueError("normalise: mode window needs window: [low, high]")
        if self.mode != "window" and self.window is not None:
            raise ValueError(f"normalise: window is for mode window, not {self.mode}")
        if self.window is not None and self.window[1] <= self.window[0]:
            raise ValueError("normalise: window high must exceed low")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError("normalise: percentiles must satisfy 0 <= low < high <= 100")
        return self


class Normalise(Operator):
    """Intensity normalisation as the model was trained, in float32 on one new array (the input is kept):
    a fixed window, a z-score, or a window between two percentiles; then an optional clip and affine."""

    op = "normalise"
    Params = NormaliseParams

    def _bounds(self, y: npt.NDArray[np.float32]) -> tuple[float, float]:
        p: NormaliseParams = self.params
        if p.mode == "window":
            assert p.window is not None
            return float(p.window[0]), float(p.window[1] - p.window[0])
        values = y[y != 0] if p.nonzero else y
        if values.size == 0:
            raise OperatorError("normalise: no voxels to take statistics from")
        if p.mode == "zscore":
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            if std == 0.0:
                raise OperatorError("normalise: the volume is constant (standard deviation 0)")
            return mean, std
        lo, hi = (float(v) for v in np.percentile(values, p.percentiles))
        if hi <= lo:
            raise OperatorError(f"normalise: percentiles {p.percentiles} give an empty window ({lo}, {hi})")
        return lo, hi - lo

    def run(self, ctx: Context) -> None:
        p: NormaliseParams = self.params
        out = []
        for x in ctx.model_inputs:
            y = np.array(x, dtype=np.float32)  # one new array (x stays as loaded), then in place
            offset, scale = self._bounds(y)
            np.subtract(y, np.float32(offset), out=y)
            np.divide(y, np.float32(scale), out=y)
            if p.clip is not None:
                np.clip(y, p.clip[0], p.clip[1], out=y)
            if p.affine is not None:
                np.multiply(y, np.float32(p.affine[0]), out=y)
                np.add(y, np.float32(p.affine[1]), out=y)
            out.append(y)
        ctx.model_inputs = out
