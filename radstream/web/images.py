"""Server-side rendering of source slices and segmentation overlays (numpy + Pillow, PNG out).

A source series is read from the store (paths from ``source_instances``), sorted along the
slice normal and windowed once; a DICOM SEG (binary or fractional) becomes a label volume by
matching each frame to its source instance (Derivation Image Sequence, else the frame's
position). Results are cached per series and SEG, so moving the slider only encodes a PNG.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image

from radstream.dicom_seg import SEG_SOP_CLASS, frame_position, frame_segment, frame_source, seg_frames
from radstream.store import path_for_uri

# overlay colours per segment number (RGBA), cycling
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (80, 255, 120), (220, 100, 255), (255, 140, 40)]


@dataclass(frozen=True, slots=True)
class Volume:
    sop_uids: list[str]
    positions: list[float]
    pixels: NDArray[Any]  # (slices, rows, cols) uint8, windowed

    @property
    def depth(self) -> int:
        return int(self.pixels.shape[0])


def _normal(ds: Any) -> NDArray[Any] | None:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    r, c = np.array(iop[:3], float), np.array(iop[3:], float)
    out: NDArray[Any] = np.cross(r, c)
    return out


def _position(ds: Any, normal: NDArray[Any] | None) -> float:
    ipp = getattr(ds, "ImagePositionPatient", None)
    if ipp is not None and normal is not None:
        return float(np.dot(np.array(ipp, float), normal))
    return float(getattr(ds, "InstanceNumber", 0) or 0)


def _window(stack: NDArray[Any]) -> NDArray[Any]:
    lo, hi = np.percentile(stack, [0.5, 99.5]) if stack.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((stack - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def load_volume(instances: list[tuple[str, str]], store_root: Path) -> Volume:
    """Read (SOP UID, store URI) pairs into a windowed slice stack (single-frame images)."""
    items: list[tuple[float, str, NDArray[Any]]] = []
    for sop_uid, uri in instances:
        ds = pydicom.dcmread(path_for_uri(uri, store_root))
        arr = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        arr = arr * slope + intercept
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            arr = arr.max() - arr
        if arr.ndim == 3:  # a multi-frame image: each frame a slice
            for k in range(arr.shape[0]):
                items.append((float(k), f"{sop_uid}#{k + 1}", arr[k]))
            continue
        items.append((_position(ds, _normal(ds)), sop_uid, arr))
    if not items:
        raise ValueError("the series has no readable instances")
    items.sort(key=lambda t: t[0])
    shape = items[0][2].shape
    items = [t for t in items if t[2].shape == shape]
    stack = np.stack([t[2] for t in items])
    return Volume([t[1] for t in items], [t[0] for t in items], _window(stack))


def seg_labels(seg_path: Path, volume: Volume, source_positions: dict[str, NDArray[Any]] | None = None) -> NDArray[Any]:
    """A label volume (uint8, segment number, 0 = background) aligned with ``volume``."""
    ds = pydicom.dcmread(seg_path)
    if str(ds.SOPClassUID) != SEG_SOP_CLASS:
        raise ValueError("not a DICOM Segmentation")
    frames = seg_frames(ds)
    labels = np.zeros(volume.pixels.shape, np.uint8)
    index = {uid: k for k, uid in enumerate(volume.sop_uids)}
    for i in range(frames.shape[0]):
        k = index.get(frame_source(ds, i) or "")
        if k is None and source_positions:
            pos = frame_position(ds, i)
            if pos is not None:
                best = min(source_positions.items(), key=lambda kv: float(np.linalg.norm(kv[1] - pos)))
                if float(np.linalg.norm(best[1] - pos)) < 1e-2:
                    k = index.get(best[0])
        if k is None or frames[i].shape != labels.shape[1:]:
            continue
        labels[k][frames[i]] = min(frame_segment(ds, i), 255)
    return labels


def png(array: NDArray[Any], mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def slice_png(volume: Volume, k: int) -> bytes:
    return png(volume.pixels[max(0, min(k, volume.depth - 1))], "L")


def overlay_png(labels: NDArray[Any], k: int) -> bytes:
    sl = labels[max(0, min(k, labels.shape[0] - 1))]
    rgba = np.zeros((*sl.shape, 4), np.uint8)
    for seg in np.unique(sl):
        if seg == 0:
            continue
        rgba[sl == seg] = (*COLOURS[(int(seg) - 1) % len(COLOURS)], 255)
    return png(rgba, "RGBA")


def best_slice(labels: NDArray[Any]) -> int:
    """The slice with the most segmented voxels (where the viewer opens)."""
    if labels.size == 0:
        return 0
    counts = labels.reshape(labels.shape[0], -1).astype(bool).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else labels.shape[0] // 2


class LRU:
    """A small thread-safe cache of loaded volumes and label maps."""

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
