"""Reading DICOM Segmentation objects: header facts, frames, volumes, and the check against the source.

Used by everything that takes a SEG from outside (a reader's corrected segmentation, a human
segmentation sent by C-STORE or uploaded for the blinded study) and by the viewer. The header is
read without pixels first, so a SEG whose frames would decode to more than a set size is refused
before any pixel data is decompressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.uid import UID

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# the largest decoded SEG (frames x rows x columns, one byte each) taken from outside
DEFAULT_MAX_DECODED_BYTES = 512 * 1024 * 1024
# a frame lies on a source slice when their positions are this close (mm)
POSITION_TOLERANCE_MM = 0.01


class SegRefused(ValueError):
    """The object is not a usable segmentation of the source it names; the message says why."""


def frame_source(ds: Any, i: int) -> str | None:
    try:
        pf = ds.PerFrameFunctionalGroupsSequence[i]
        return str(pf.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
    except (AttributeError, IndexError, KeyError):
        return None


def frame_segment(ds: Any, i: int) -> int:
    try:
        return int(ds.PerFrameFunctionalGroupsSequence[i].SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    except (AttributeError, IndexError, KeyError):
        return 1


def frame_position(ds: Any, i: int) -> NDArray[Any] | None:
    try:
        return np.array(ds.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0].ImagePositionPatient, float)
    except (AttributeError, IndexError, KeyError):
        return None


def seg_frames(ds: Any) -> NDArray[Any]:
    """The SEG's frames as booleans, shape (frames, rows, cols)."""
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if str(getattr(ds, "SegmentationType", "BINARY")) == "FRACTIONAL":
        top = float(getattr(ds, "MaximumFractionalValue", 255) or 255)
        return np.asarray(arr, float) >= top / 2
    return np.asarray(arr) > 0


def segment_names(ds: Any) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in getattr(ds, "SegmentSequence", [])}


def voxel_ml(ds: Any) -> float:
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    dy, dx = (float(v) for v in pm.PixelSpacing)
    dz = float(getattr(pm, "SpacingBetweenSlices", None) or getattr(pm, "SliceThickness", None) or 1.0)
    return dx * dy * dz / 1000.0


def seg_volume_ml(seg_path: Path) -> tuple[float, dict[str, float]]:
    """Total and per-segment volume of a SEG in mL (voxel count x pixel area x slice spacing)."""
    ds = pydicom.dcmread(seg_path)
    if str(ds.SOPClassUID) != SEG_SOP_CLASS:
        raise ValueError("not a DICOM Segmentation")
    frames = seg_frames(ds)
    vml = voxel_ml(ds)
    names = segment_names(ds)
    per: dict[str, float] = {}
    for i in range(frames.shape[0]):
        name = names.get(frame_segment(ds, i), str(frame_segment(ds, i)))
        per[name] = per.get(name, 0.0) + float(frames[i].sum()) * vml
    return sum(per.values()), per


def referenced_series(seg_path: Path) -> set[str]:
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    return {str(s.SeriesInstanceUID) for s in getattr(ds, "ReferencedSeriesSequence", [])}


@dataclass(frozen=True, slots=True)
class SegInfo:
    """What a SEG's header says (read without its pixels)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    referenced_series: tuple[str, ...]
    rows: int
    columns: int
    frames: int
    frame_sources: tuple[str | None, ...]
    frame_positions: tuple[tuple[float, float, float] | None, ...]
    segments: dict[int, str] = field(default_factory=dict)


def _uid(value: Any, what: str) -> str:
    text = str(value or "").strip()
    if not text or not UID(text).is_valid:
        raise SegRefused(f"the SEG's {what} is missing or not a valid UID")
    return text


def inspect_seg(path: Path, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> SegInfo:
    """Read and check a SEG's header; raises :class:`SegRefused` with the reason."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for malformed input
        raise SegRefused(f"not a readable DICOM file ({type(exc).__name__})") from exc
    if str(getattr(ds, "SOPClassUID", "")) != SEG_SOP_CLASS:
        raise SegRefused("not a DICOM Segmentation (SOP Class UID is not Segmentation Storage)")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise SegRefused("the SEG has no frames (Rows, Columns or Number of Frames is 0)")
    if rows * cols * frames > max_decoded_bytes:
        raise SegRefused(f"the SEG would decode to {rows * cols * frames} bytes, over the limit of "
                         f"{max_decoded_bytes}")
    refs = tuple(_uid(s.SeriesInstanceUID, "referenced series")
                 for s in getattr(ds, "ReferencedSeriesSequence", []))
    if not refs:
        raise SegRefused("the SEG names no source series (Referenced Series Sequence is empty)")
    pf = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if pf is None or len(pf) != frames:
        raise SegRefused("the SEG's per-frame functional groups do not match its number of frames")
    positions: list[tuple[float, float, float] | None] = []
    for i in range(frames):
        p = frame_position(ds, i)
        positions.append((float(p[0]), float(p[1]), float(p[2])) if p is not None and len(p) >= 3 else None)
    names = segment_names(ds)
    if not names:
        raise SegRefused("the SEG describes no segments")
    return SegInfo(
        sop_instance_uid=_uid(ds.get("SOPInstanceUID"), "SOP Instance UID"),
        series_instance_uid=_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
        study_instance_uid=_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
        referenced_series=refs, rows=rows, columns=cols, frames=frames,
        frame_sources=tuple(frame_source(ds, i) for i in range(frames)),
        frame_positions=tuple(positions), segments=names)


@dataclass(frozen=True, slots=True)
class SourceSlice:
    sop_instance_uid: str
    study_instance_uid: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None


def read_source_slice(sop_uid: str, path: Path) -> SourceSlice:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ipp = getattr(ds, "ImagePositionPatient", None)
    return SourceSlice(sop_uid, str(getattr(ds, "StudyInstanceUID", "")), int(getattr(ds, "Rows", 0) or 0),
                       int(getattr(ds, "Columns", 0) or 0),
                       (float(ipp[0]), float(ipp[1]), float(ipp[2])) if ipp is not None and len(ipp) >= 3 else None)


def check_against_source(info: SegInfo, source: list[SourceSlice]) -> None:
    """Refuse a SEG that does not belong to ``source`` (its referenced series, as stored).

    The SEG must be of the same study, have the source's matrix, and every frame must lie on a
    source slice: named in its Derivation Image Sequence, or at a source slice's position.
    """
    if not source:
        raise SegRefused("the source series has no instances")
    studies = {s.study_instance_uid for s in source}
    if info.study_instance_uid not in studies:
        raise SegRefused(f"the SEG belongs to study {info.study_instance_uid} but its source series belongs to "
                         f"another study ({', '.join(sorted(studies))})")
    shapes = {(s.rows, s.columns) for s in source}
    if (info.rows, info.columns) not in shapes:
        raise SegRefused(f"the SEG's frames are {info.rows}x{info.columns} but the source images are "
                         f"{' / '.join(f'{r}x{c}' for r, c in sorted(shapes))}")
    by_uid = {s.sop_instance_uid for s in source}
    positions = np.array([s.position for s in source if s.position is not None], float).reshape(-1, 3)
    for i, (ref, pos) in enumerate(zip(info.frame_sources, info.frame_positions, strict=True)):
        if ref is not None:
            if ref not in by_uid:
                raise SegRefused(f"frame {i + 1} refers to an image that is not in the source series")
            continue
        if pos is None or not len(positions):
            raise SegRefused(f"frame {i + 1} names neither a source image nor a position")
        if float(np.min(np.linalg.norm(positions - np.array(pos), axis=1))) > POSITION_TOLERANCE_MM:
            raise SegRefused(f"frame {i + 1} lies on no slice of the source series")


def dice(a: NDArray[Any], b: NDArray[Any]) -> float | None:
    """Dice coefficient of two boolean masks of one grid; None when both are empty."""
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(a, b).sum()) / total
