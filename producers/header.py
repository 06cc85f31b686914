"""Read and validate the header of a received instance (never its pixel data)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from radstream.producers.structure import Layout, MalformedDataset, check_layout, file_meta_end

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# DIMSE statuses (PS3.4 Annex B and C)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122


class Rejected(Exception):
    """The instance is refused with a DIMSE failure ``status``; ``reason`` is PHI-free."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status: int = status
        self.reason: str = reason


@dataclass(slots=True)
class Header:
    dataset: Dataset
    layout: Layout
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and UID_RE.match(value) is not None


def is_storage_class(uid: str) -> bool:
    return uid_to_service_class(uid) is StorageServiceClass


def _uid(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)  # pydicom decodes elements lazily: a corrupt VR raises here
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"unreadable {keyword} ({type(exc).__name__})") from exc
    if value is None or str(value).strip("\0 ") == "":
        raise Rejected(DOES_NOT_MATCH, f"missing {keyword}")
    text = str(value).strip("\0 ")
    if not valid_uid(text):
        raise Rejected(DOES_NOT_MATCH, f"invalid {keyword}")
    return text


def read_header(path: Path, affected_sop_class: str, affected_sop_instance: str, size: int) -> Header:
    """Check the structure, parse the header and validate the UIDs against the command."""
    if not valid_uid(affected_sop_class) or not valid_uid(affected_sop_instance):
        raise Rejected(CANNOT_UNDERSTAND, "invalid affected SOP UID in the command")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        with open(path, "rb") as fh:
            layout = check_layout(fh, file_meta_end(fh), size, ts)
    except MalformedDataset as exc:
        raise Rejected(CANNOT_UNDERSTAND, str(exc)) from exc
    except Exception as exc:  # pydicom raises many types on garbage
        raise Rejected(CANNOT_UNDERSTAND, f"unreadable data set ({type(exc).__name__})") from exc
    sop_class = _uid(ds, "SOPClassUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    if sop_class != affected_sop_class:
        raise Rejected(DOES_NOT_MATCH, "SOP Class UID differs from the affected SOP class")
    if sop_instance != affected_sop_instance:
        raise Rejected(DOES_NOT_MATCH, "SOP Instance UID differs from the affected SOP instance")
    if not is_storage_class(sop_class):
        raise Rejected(SOP_CLASS_NOT_SUPPORTED, "not a storage SOP class")
    return Header(
        dataset=ds,
        layout=layout,
        transfer_syntax_uid=ts,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
    )


def header_bytes(path: Path, layout_pixel_offset: int | None, limit: int = 64 * 1024) -> bytes:
    """The bytes before the pixel data (at most ``limit``), for dead letters."""
    n = limit if layout_pixel_offset is None else min(limit, layout_pixel_offset)
    try:
        with open(path, "rb") as fh:
            data = fh.read(n)
    except OSError:
        return b""
    if layout_pixel_offset is None:
        # unknown layout: cut at anything that looks like a Pixel Data tag
        for marker in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
            at = data.find(marker, 132)
            if at >= 0:
                data = data[:at]
    return data


