"""The attributes of a DICOM header as the events carry them (``InstanceReceived`` and what derives from it).

The ingest SCP fills its events with :func:`header_fields`; ``radstream rules test`` reads files on disk
with the same function, so a rule sees the same value live and in the tester. Bad values become None,
never an error: the instance has passed validation and is not refused for a descriptive attribute.
"""

from __future__ import annotations

from typing import Any

import pydicom
from pydicom.dataset import Dataset


def text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    result = str(value).strip("\0 ")
    return result or None


def integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0]
        result = int(value)
    except Exception:
        return None
    return result if -(2**31) <= result < 2**31 else None


def floats(ds: Dataset, keyword: str) -> list[float] | None:
    try:
        value: Any = ds.get(keyword)
        if value is None or value == "":
            return None
        items = list(value) if isinstance(value, pydicom.multival.MultiValue | list | tuple) else [value]
        return [float(v) for v in items]
    except Exception:
        return None


def floating(ds: Dataset, keyword: str) -> float | None:
    values = floats(ds, keyword)
    return values[0] if values else None


def header_fields(ds: Dataset) -> dict[str, Any]:
    """The ``InstanceReceived`` fields read from the header (identity, routing, geometry, study identity)."""
    return {
        "accession_number": text(ds, "AccessionNumber"),
        "modality": text(ds, "Modality"),
        "body_part_examined": text(ds, "BodyPartExamined"),
        "series_description": text(ds, "SeriesDescription"),
        "series_number": integer(ds, "SeriesNumber"),
        "instance_number": integer(ds, "InstanceNumber"),
        "image_position_patient": floats(ds, "ImagePositionPatient"),
        "image_orientation_patient": floats(ds, "ImageOrientationPatient"),
        "pixel_spacing": floats(ds, "PixelSpacing"),
        "slice_thickness": floating(ds, "SliceThickness"),
        "rows": integer(ds, "Rows"),
        "columns": integer(ds, "Columns"),
        "number_of_frames": integer(ds, "NumberOfFrames"),
        "station_name": text(ds, "StationName"),
        "manufacturer": text(ds, "Manufacturer"),
        "study_date": text(ds, "StudyDate"),
        "study_time": text(ds, "StudyTime"),
        "study_description": text(ds, "StudyDescription"),
        "institution_name": text(ds, "InstitutionName"),
        "referring_physician_name": text(ds, "ReferringPhysicianName"),
    }
