"""Human segmentations of the synthetic liver CT, as a segmentation tool would send them.

For the blinded multi-reader study a real site has an expert's and a novice's manual
segmentations. Here a small "tool" makes them from the CT series itself: the phantom's tissues
have separate HU bands (``radstream.models.specs.LIVER_HU``), so the *expert* labels each voxel
by its band (exact on the phantom); the *novice* over-segments the right lobe by one voxel,
under-segments the left lobe by one, and leaves the vessels out. Both are written as DICOM SEG
(highdicom, manual segments, the reader as content creator), ready to be sent by C-STORE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import generate_uid
from scipy import ndimage

from radstream import __version__
from radstream.consumers.operators.dicom_out import SEGMENT_CODES, TISSUE
from radstream.models.specs import LIVER_HU

LABELS = {1: "liver right lobe", 2: "liver left lobe", 3: "hepatic vessels"}
Style = Literal["expert", "novice"]


def _bands() -> list[tuple[int, float, float]]:
    """(label, low HU, high HU) halfway between the phantom's tissue levels."""
    right, left, vessels, bone = (LIVER_HU[k] for k in ("right_lobe", "left_lobe", "vessels", "bone"))
    soft = LIVER_HU["soft_tissue"]
    return [(1, (soft + right) / 2, (right + left) / 2), (2, (right + left) / 2, (left + vessels) / 2),
            (3, (left + vessels) / 2, (vessels + bone) / 2)]


def read_series(series_dir: Path) -> list[Any]:
    """The series' datasets in slice order (along the normal)."""
    datasets = [pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))]
    if not datasets:
        raise ValueError(f"no DICOM files in {series_dir}")
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))


def label_map(datasets: list[Any], style: Style) -> np.ndarray[Any, Any]:
    hu = np.stack([ds.pixel_array * float(getattr(ds, "RescaleSlope", 1) or 1)
                   + float(getattr(ds, "RescaleIntercept", 0) or 0) for ds in datasets])
    labels = np.zeros(hu.shape, np.uint8)
    for value, lo, hi in _bands():
        labels[(hu >= lo) & (hu < hi)] = value
    if style == "novice":
        in_plane = np.zeros((1, 3, 3), bool)
        in_plane[0] = ndimage.generate_binary_structure(2, 1)
        right = ndimage.binary_dilation(labels == 1, in_plane) & (labels != 0)
        left = ndimage.binary_erosion(labels == 2, in_plane)
        out = np.zeros_like(labels)
        out[left] = 2
        out[right] = 1
        labels = out  # vessels left out
    return labels


def human_segmentation(series_dir: Path, out: Path, *, style: Style, reader: str, series_number: int = 300) -> Path:
    """Write the ``style`` segmentation of the CT series in ``series_dir`` to ``out`` (a DICOM SEG)."""
    datasets = read_series(series_dir)
    labels = label_map(datasets, style)
    present = [v for v in sorted(LABELS) if np.any(labels == v)]
    descriptions = []
    pixel = np.zeros_like(labels)
    for number, value in enumerate(present, start=1):
        name = LABELS[value]
        category, typ = SEGMENT_CODES.get(name, (TISSUE, TISSUE))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=typ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
        pixel[labels == value] = number
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="radstream synth",
        manufacturer_model_name="manual segmentation tool", software_versions=__version__,
        device_serial_number="0", series_description=f"MANUAL SEG {style}"[:64], content_creator_name=reader,
        content_label="MANUAL", content_description=f"manual liver segmentation ({style})")
    seg.ContentCreatorName = reader
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out


def voxel_counts(series_dir: Path, style: Style) -> dict[str, int]:
    labels = label_map(read_series(series_dir), style)
    return {name: int((labels == v).sum()) for v, name in LABELS.items()}


__all__ = ["LABELS", "human_segmentation", "label_map", "read_series", "voxel_counts"]
