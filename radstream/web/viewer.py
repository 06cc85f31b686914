"""The source images and segmentation of one result, loaded once and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import pydicom
from numpy.typing import NDArray

from radstream.settings import Settings
from radstream.store import path_for_uri
from radstream.web.context import Web
from radstream.web.images import LRU, Volume, best_slice, load_volume, seg_labels
from radstream.web.instances import series_instances


@dataclass(frozen=True, slots=True)
class View:
    volume: Volume
    labels: NDArray[Any] | None

    @property
    def start(self) -> int:
        return best_slice(self.labels) if self.labels is not None else self.volume.depth // 2


class ViewCache(Protocol):
    """Where loaded source volumes and label maps are kept (the web app's, or a tool's own)."""

    settings: Settings
    volumes: LRU
    labels: LRU


@dataclass
class ImageCache:
    """A :class:`ViewCache` for tools outside the web app (``radstream study report``)."""

    settings: Settings
    volumes: LRU = field(default_factory=lambda: LRU(4))
    labels: LRU = field(default_factory=lambda: LRU(16))


def source_instances(conn: psycopg.Connection[Any], result: dict[str, Any]) -> list[tuple[str, str]]:
    for uid in result.get("series_instance_uids") or []:
        inst = series_instances(conn, uid)
        if inst:
            return inst
    return []


def load_view(web: ViewCache, conn: psycopg.Connection[Any], result: dict[str, Any]) -> View | None:
    """The result's first source series with its SEG as labels; None when the images are not at hand."""
    root = web.settings.store_root
    key = result["result_id"]
    volume = web.volumes.get(key)
    if volume is None:
        inst = source_instances(conn, result)
        if not inst:
            return None
        try:
            volume = load_volume(inst, root)
        except (OSError, ValueError, AttributeError):
            return None
        web.volumes.put(key, volume)
    labels = web.labels.get((key, result.get("seg_uri")))
    if labels is None and result.get("seg_uri"):
        try:
            labels = seg_labels(path_for_uri(str(result["seg_uri"]), root), volume)
        except (OSError, ValueError, AttributeError):
            labels = None
        if labels is not None:
            web.labels.put((key, result.get("seg_uri")), labels)
    return View(volume, labels)


def patient_header(web: Web, conn: psycopg.Connection[Any], result: dict[str, Any]) -> dict[str, str]:
    """Patient Name / ID and Study Description from the first source instance (shown, escaped; never logged)."""
    cached = web.headers.get(result["result_id"])
    if cached is not None:
        return dict(cached)
    out: dict[str, str] = {}
    inst = source_instances(conn, result)
    if inst:
        try:
            ds = pydicom.dcmread(path_for_uri(inst[0][1], web.settings.store_root), stop_before_pixels=True)
            out = {"patient_name": str(getattr(ds, "PatientName", "") or ""),
                   "patient_id": str(getattr(ds, "PatientID", "") or ""),
                   "study_description": str(getattr(ds, "StudyDescription", "") or ""),
                   "rows": str(getattr(ds, "Rows", "") or ""), "columns": str(getattr(ds, "Columns", "") or "")}
        except (OSError, ValueError):
            out = {}
    web.headers.put(result["result_id"], out)
    return out
