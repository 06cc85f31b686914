"""Resample to a model grid (SimpleITK) and intensity normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
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
    window: tuple[float, float] = Field(description="modality values mapped to 0 and 1")
    clip: tuple[float, float] | None = Field(None, description="clip the normalised values to this range")


class Normalise(Operator):
    """(x - low) / (high - low) in float32, optionally clipped."""

    op = "normalise"
    Params = NormaliseParams

    def run(self, ctx: Context) -> None:
        lo, hi = self.params.window
        if hi <= lo:
            raise OperatorError("normalise: window high must exceed low")
        out = []
        for x in ctx.model_inputs:
            y = np.array(x, dtype=np.float32)  # one new array (x stays as loaded), then in place
            np.subtract(y, np.float32(lo), out=y)
            np.divide(y, np.float32(hi - lo), out=y)
            if self.params.clip is not None:
                np.clip(y, self.params.clip[0], self.params.clip[1], out=y)
            out.append(y)
        ctx.model_inputs = out
