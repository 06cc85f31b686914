"""Series loader: the request's instances from the store, as a volume in patient space or as 2-D images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from radstream.consumers.operators.base import Context, Image2D, Operator, OperatorError, Params, Volume

from radstream.store import path_for_uri


class LoadParams(Params):
    kind: Literal["volume", "images"] = "volume"
    min_slices: int = 1
    series_index: int = 0  # which selected series feeds a volume pipeline
    max_gap_tolerance: float = 0.05  # relative deviation of slice spacing allowed


@dataclass
class Frame:
    """One image plane: a single-frame instance, or one frame of a multi-frame (Enhanced) instance."""

    dataset: Dataset
    index: int  # frame number - 1 (0 for single-frame instances)
    orientation: npt.NDArray[np.float64]  # 6 values
    position: npt.NDArray[np.float64] | None
    pixel_spacing: tuple[float, float]  # row spacing, column spacing
    thickness: float | None
    slope: float
    intercept: float


def _instance(ds: Dataset) -> str:
    return str(getattr(ds, "SOPInstanceUID", "?"))


def decode_pixels(ds: Dataset) -> npt.NDArray[Any]:
    """The stored pixel values (frames first for multi-frame), or OperatorError saying why not."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise OperatorError(f"instance {_instance(ds)} has no pixel data")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise OperatorError(f"instance {_instance(ds)}: {ds.SamplesPerPixel} samples per pixel "
                            f"({getattr(ds, 'PhotometricInterpretation', '?')}); a greyscale image is needed")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises RuntimeError, ValueError, NotImplementedError... per decoder
        detail = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or type(exc).__name__
        raise OperatorError(f"instance {_instance(ds)}: pixel data in {ts_name} cannot be decoded: "
                            f"{type(exc).__name__}: {detail}"[:800]) from exc


def _modality_values(ds: Dataset) -> npt.NDArray[Any]:
    arr = decode_pixels(ds).astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr * slope + intercept if (slope, intercept) != (1.0, 0.0) else arr


def _group(ds: Dataset, shared: Dataset | None, per_frame: Dataset | None, sequence: str) -> Dataset | None:
    for source in (per_frame, shared):
        if source is not None and sequence in source and len(source[sequence].value) > 0:
            item: Dataset = source[sequence].value[0]
            return item
    return None


def frames_of(ds: Dataset) -> list[Frame]:
    """The image planes of one instance, with their geometry and rescale (functional groups for Enhanced)."""
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    if per_frame is None and shared_seq is None:
        if n != 1:
            raise OperatorError(f"instance {_instance(ds)}: {n} frames but no functional groups (plane positions)")
        if "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            raise OperatorError(f"instance {_instance(ds)} has no image plane (orientation, pixel spacing)")
        pos = ds.get("ImagePositionPatient")
        return [Frame(ds, 0, np.array(ds.ImageOrientationPatient, dtype=float),
                      None if pos is None else np.array(pos, dtype=float),
                      (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                      float(ds.SliceThickness) if getattr(ds, "SliceThickness", None) else None,
                      float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0))]
    shared = shared_seq[0] if shared_seq else None
    if per_frame is not None and len(per_frame) != n:
        raise OperatorError(f"instance {_instance(ds)}: {len(per_frame)} per-frame groups for {n} frames")
    frames = []
    for i in range(n):
        item = per_frame[i] if per_frame is not None else None
        orient, plane = _group(ds, shared, item, "PlaneOrientationSequence"), _group(ds, shared, item,
                                                                                      "PlanePositionSequence")
        measures = _group(ds, shared, item, "PixelMeasuresSequence")
        value = _group(ds, shared, item, "PixelValueTransformationSequence")
        if orient is None or plane is None or measures is None or "PixelSpacing" not in measures:
            raise OperatorError(f"instance {_instance(ds)} frame {i + 1}: no plane orientation, position or "
                                "pixel spacing in its functional groups")
        thickness = measures.get("SliceThickness")
        frames.append(Frame(ds, i, np.array(orient.ImageOrientationPatient, dtype=float),
                            np.array(plane.ImagePositionPatient, dtype=float),
                            (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
                            float(thickness) if thickness else None,
                            float(value.get("RescaleSlope", 1) or 1) if value is not None else 1.0,
                            float(value.get("RescaleIntercept", 0) or 0) if value is not None else 0.0))
    return frames


def build_volume(datasets: list[Dataset], tolerance: float = 0.05) -> Volume:
    """Sort the planes (instances or Enhanced frames) along the normal, check the geometry, stack
    (slices, rows, columns) in modality units."""
    if not datasets:
        raise OperatorError("no instances")
    frames = [f for ds in datasets for f in frames_of(ds)]
    iop = frames[0].orientation
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    for f in frames:
        if not np.allclose(f.orientation, iop, atol=1e-4):
            raise OperatorError("planes of the series have different orientations")
        if f.position is None:
            raise OperatorError(f"instance {_instance(f.dataset)} has no image position")
    keyed = sorted(((float(np.dot(normal, f.position)), k, f) for k, f in enumerate(frames)  # type: ignore[arg-type]
                    ), key=lambda t: (t[0], t[1]))
    positions = np.array([k for k, _, _ in keyed])
    ordered = [f for _, _, f in keyed]
    if len(ordered) > 1:
        gaps = np.diff(positions)
        dz = float(np.median(gaps))
        if dz <= 0 or np.any(np.abs(gaps - dz) > tolerance * dz):
            raise OperatorError("slices are not evenly spaced (missing or duplicate slices)")
    else:
        dz = ordered[0].thickness or 1.0
    rows, cols = int(ordered[0].dataset.Rows), int(ordered[0].dataset.Columns)
    if any((int(f.dataset.Rows), int(f.dataset.Columns)) != (rows, cols) for f in ordered):
        raise OperatorError("instances of the series have different matrix sizes")
    ps = ordered[0].pixel_spacing  # row spacing, column spacing
    if any(not np.allclose(f.pixel_spacing, ps, rtol=1e-4) for f in ordered):
        raise OperatorError("planes of the series have different pixel spacings")
    decoded: dict[int, npt.NDArray[Any]] = {}
    planes = []
    for f in ordered:
        key = id(f.dataset)
        if key not in decoded:
            decoded[key] = decode_pixels(f.dataset)
        arr = decoded[key]
        n = int(getattr(f.dataset, "NumberOfFrames", 1) or 1)
        plane = (arr[f.index] if n > 1 else arr).astype(np.float32)
        if (f.slope, f.intercept) != (1.0, 0.0):
            plane = plane * np.float32(f.slope) + np.float32(f.intercept)
        planes.append(plane)
    array = np.stack(planes)
    direction = (row_dir[0], col_dir[0], normal[0], row_dir[1], col_dir[1], normal[1],
                 row_dir[2], col_dir[2], normal[2])
    origin = tuple(float(v) for v in ordered[0].position)  # type: ignore[union-attr]
    sources = list(dict.fromkeys(id(f.dataset) for f in ordered))
    by_id = {id(ds): ds for ds in datasets}
    return Volume(array, (ps[1], ps[0], dz), origin, tuple(float(v) for v in direction),  # type: ignore[arg-type]
                  [by_id[k] for k in sources])


class SeriesLoader(Operator):
    op = "load_series"
    Params = LoadParams

    def run(self, ctx: Context) -> None:
        p: LoadParams = self.params
        series = ctx.request.series
        if not series:
            raise OperatorError("the request selects no series")
        chosen = [series[p.series_index]] if p.kind == "volume" else series
        if p.series_index >= len(series):
            raise OperatorError(f"series_index {p.series_index} but {len(series)} series selected")
        datasets: list[Dataset] = []
        for s in chosen:
            for inst in s.instances:
                try:
                    path = path_for_uri(inst.store_uri, ctx.settings.store_root)
                except ValueError as exc:
                    raise OperatorError(f"instance {inst.sop_instance_uid}: {exc}") from exc
                if not path.exists():
                    raise OperatorError(f"instance {inst.sop_instance_uid} is not in the store")
                datasets.append(pydicom.dcmread(path))
        if p.kind == "images":
            ctx.images = [Image2D(_modality_values(ds), ds) for ds in datasets]
            ctx.model_inputs = [im.array for im in ctx.images]
            return
        if len(datasets) < p.min_slices:
            raise OperatorError(f"{len(datasets)} slices, at least {p.min_slices} needed")
        ctx.volume = build_volume(datasets, p.max_gap_tolerance)
        ctx.model_inputs = [ctx.volume.array]
