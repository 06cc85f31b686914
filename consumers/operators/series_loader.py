"""Series loader: the request's instances from the store, as a volume in patient space or as 2-D images."""

from __future__ import annotations

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


def _modality_values(ds: Dataset) -> npt.NDArray[Any]:
    arr = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr * slope + intercept if (slope, intercept) != (1.0, 0.0) else arr


def build_volume(datasets: list[Dataset], tolerance: float = 0.05) -> Volume:
    """Sort slices along the normal, check the geometry, stack (slices, rows, columns)."""
    if not datasets:
        raise OperatorError("no instances")
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    for ds in datasets:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise OperatorError("instances of the series have different orientations")
    keyed = sorted(((float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))), ds)
                    for ds in datasets), key=lambda t: t[0])
    positions = np.array([k for k, _ in keyed])
    ordered = [ds for _, ds in keyed]
    if len(ordered) > 1:
        gaps = np.diff(positions)
        dz = float(np.median(gaps))
        if dz <= 0 or np.any(np.abs(gaps - dz) > tolerance * dz):
            raise OperatorError("slices are not evenly spaced (missing or duplicate slices)")
    else:
        dz = float(getattr(ordered[0], "SliceThickness", 1.0) or 1.0)
    rows, cols = int(ordered[0].Rows), int(ordered[0].Columns)
    if any((int(ds.Rows), int(ds.Columns)) != (rows, cols) for ds in ordered):
        raise OperatorError("instances of the series have different matrix sizes")
    ps = [float(v) for v in ordered[0].PixelSpacing]  # row spacing, column spacing
    array = np.stack([_modality_values(ds) for ds in ordered])
    direction = (row_dir[0], col_dir[0], normal[0], row_dir[1], col_dir[1], normal[1],
                 row_dir[2], col_dir[2], normal[2])
    origin = tuple(float(v) for v in ordered[0].ImagePositionPatient)
    return Volume(array, (ps[1], ps[0], dz), origin, tuple(float(v) for v in direction),  # type: ignore[arg-type]
                  ordered)


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
