"""Post-processing: connected components, volumes in mL per label, hip detections."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from radstream.consumers.operators.base import Context, Operator, OperatorError, Params
from radstream.consumers.operators.preprocess import labels_to_source
from scipy import ndimage

from radstream.events.models import Detection, Measurement


def source_labels(ctx: Context) -> npt.NDArray[Any]:
    """The label map on the source grid (slices, rows, columns), from the model output if not yet set."""
    if ctx.labels is None:
        if not ctx.model_outputs or ctx.volume is None:
            raise OperatorError("no volume label map (run load_series and triton_infer first)")
        labels = labels_to_source(ctx, np.asarray(ctx.model_outputs[0]))
        if labels.shape != ctx.volume.array.shape:
            raise OperatorError(f"model output shape {labels.shape} != volume shape {ctx.volume.array.shape}")
        ctx.labels = labels.astype(np.uint8)
    return ctx.labels


class ComponentsParams(Params):
    min_voxels: int = Field(1, ge=1, description="components smaller than this are removed (per label)")
    largest_only: list[int] = Field(default_factory=list, description="labels that keep their largest component")


class ConnectedComponents(Operator):
    """Per label: 26-connected components; drop the small ones (speckle), optionally keep the largest."""

    op = "connected_components"
    Params = ComponentsParams

    def run(self, ctx: Context) -> None:
        labels = source_labels(ctx).copy()
        p: ComponentsParams = self.params
        structure = np.ones((3,) * labels.ndim, dtype=bool)
        counts: dict[str, int] = {}
        # every component of a label lies inside that label's bounding box: label each box, not the
        # whole volume (one pass finds them all; a 512x512x200 lesion map: 1.4-2.3 s before, 0.13-0.22 s)
        for value, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            region = labels[box]  # a view: dropping a component below changes ``labels``
            comp, n = ndimage.label(region == value, structure=structure)
            sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
            keep = sizes >= p.min_voxels
            if value in p.largest_only and keep.any():
                keep = np.zeros_like(keep)
                keep[int(np.argmax(sizes))] = True
            if not keep.all():
                region[np.concatenate(([False], ~keep))[comp]] = 0
            counts[str(value)] = int(keep.sum())
        ctx.labels = labels
        ctx.notes["components"] = counts


class VolumesParams(Params):
    labels: dict[int, str] = Field(description="label value -> name")
    unit: str = "mL"


class Volumes(Operator):
    """mL per label on the source grid (voxel count x voxel volume)."""

    op = "volumes"
    Params = VolumesParams

    def run(self, ctx: Context) -> None:
        labels = source_labels(ctx)
        assert ctx.volume is not None
        sx, sy, sz = ctx.volume.spacing
        voxel_ml = sx * sy * sz / 1000.0
        for value, name in sorted(self.params.labels.items()):
            count = np.count_nonzero(labels == value)  # a bincount of the whole map widens it to int64 first
            ctx.measurements.append(Measurement(name="volume", label=name, value=round(float(count) * voxel_ml, 4),
                                                unit="mL"))


class HipParams(Params):
    femur: list[int] = Field(description="class values of femur bone")
    fracture: list[int] = Field(description="class values of a fracture line")
    hardware: list[int] = Field(description="class values of metal")
    min_pixels: int = Field(20, ge=1, description="smallest hip component, in pixels (at 256 x 256)")
    min_finding_pixels: int = Field(6, ge=1, description="smallest fracture/hardware area (at 256 x 256)")


def patient_side_of_columns(orientation: list[str] | None) -> tuple[str, str]:
    """(side at low columns, side at high columns) from Patient Orientation's row direction."""
    row_dir = (orientation or ["L"])[0].upper()
    return ("right", "left") if row_dir.startswith("L") else ("left", "right")


class HipDetections(Operator):
    """From a per-pixel class map: one box per hip (largest femur component on each side), labelled
    hardware if it holds metal, else fracture if it holds a fracture line, else normal."""

    op = "hip_detections"
    Params = HipParams

    def run(self, ctx: Context) -> None:
        p: HipParams = self.params
        if len(ctx.model_outputs) != len(ctx.images):
            raise OperatorError("hip_detections needs one model output per image")
        for image, out in zip(ctx.images, ctx.model_outputs, strict=True):
            cls = np.asarray(out)
            rows, cols = cls.shape
            scale = rows * cols / (256.0 * 256.0)
            min_px = max(1, int(p.min_pixels * scale))
            min_find = max(1, int(p.min_finding_pixels * scale))
            hip = np.isin(cls, p.femur + p.fracture + p.hardware)
            comp, _n = ndimage.label(hip, structure=np.ones((3, 3), dtype=bool))
            sides = patient_side_of_columns(list(getattr(image.dataset, "PatientOrientation", []) or []))
            found: dict[str, Detection] = {}
            for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
                if sl is None:
                    continue
                mask = comp[sl] == idx
                area = int(mask.sum())
                if area < min_px:
                    continue
                centre_col = (sl[1].start + sl[1].stop) / 2.0
                side = sides[0] if centre_col < cols / 2 else sides[1]
                region = cls[sl][mask]
                n_metal = int(np.isin(region, p.hardware).sum())
                n_frac = int(np.isin(region, p.fracture).sum())
                if n_metal >= min_find:
                    finding, score = "hardware", min(1.0, n_metal / (4.0 * min_find))
                elif n_frac >= min_find:
                    finding, score = "fracture", min(1.0, n_frac / (4.0 * min_find))
                else:
                    finding, score = "normal", 1.0 - min(1.0, (n_metal + n_frac) / float(min_find))
                det = Detection(label=f"{side} hip", finding=finding, score=round(float(score), 4),
                                box=[float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)],
                                sop_instance_uid=str(image.dataset.SOPInstanceUID))
                prev = found.get(side)
                if prev is None or (det.box[2] - det.box[0]) * (det.box[3] - det.box[1]) > \
                        (prev.box[2] - prev.box[0]) * (prev.box[3] - prev.box[1]):
                    found[side] = det
            ctx.detections.extend(found[s] for s in ("right", "left") if s in found)
