"""Seed data for the web tests: real DICOM in the content store, rows written by the results sink's writer.

A brain patient with three timepoints (MR series + a highdicom SEG of a growing lesion), a hip
radiograph that needs QC, and a blinded liver result. Patient Name and Series Description of one
study hold ``<script>`` to prove escaping.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import highdicom as hd
import numpy as np
import psycopg
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.db.results_writer import ResultRows, write_result_rows
from radstream.events.models import (
    Detection,
    InferenceCompleted,
    InferenceRequested,
    InstanceRef,
    Measurement,
    SelectedSeries,
    Trigger,
)
from radstream.settings import Settings
from radstream.store import ContentStore
from radstream.synth import dicom as d
from radstream.web.instances import index_request
from radstream.web.users import add_user

XSS = "<script>alert('x')</script>"
PASSWORD = "correct horse battery"
MR = d.MR_IMAGE_STORAGE
DX = d.DX_PRESENTATION_STORAGE


@dataclass
class Seeded:
    brain_results: list[str] = field(default_factory=list)  # in time order
    brain_accessions: list[str] = field(default_factory=list)
    brain_study_uids: list[str] = field(default_factory=list)
    brain_volumes: list[float] = field(default_factory=list)
    hip_result: str = ""
    hip_accession: str = ""
    liver_result: str = ""
    liver_hash: str = ""
    xss_result: str = ""
    depth: int = 0


def _uid(*parts: object) -> str:
    """A deterministic 2.25 UID (radstream.synth.dicom.uid is random under pydicom 3 with prefix=None)."""
    return "2.25." + str(int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:30], 16))


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _mr_series(ident: d.Identity, series_desc: str, radius_mm: float, depth: int = 12,
               size: int = 48) -> tuple[list[Dataset], np.ndarray]:
    series_uid = _uid(ident.study_uid, "series")
    zz, yy, xx = np.mgrid[0:depth, 0:size, 0:size]
    spacing = 2.0
    dist = np.sqrt(((xx - size / 2) * spacing) ** 2 + ((yy - size / 2) * spacing) ** 2 + ((zz - depth / 2) * 3.0) ** 2)
    head = np.sqrt((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < size * 0.45
    lesion = dist <= radius_mm
    img = np.where(head, 400, 0) + np.where(lesion, 600, 0) + (xx * 3)
    out = []
    for k in range(depth):
        ds = d.base_dataset(ident, MR, _uid(ident.study_uid, "sop", k), series_uid, "MR", 3, series_desc, k + 1,
                            "HEAD")
        d.set_pixels(ds, img[k], 12)
        d.set_plane(ds, (-size, -size, k * 3.0), (spacing, spacing), 3.0, ident.frame_of_reference_uid)
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 100
        ds.RepetitionTime = 9000
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        out.append(ds)
    return out, lesion.astype(np.uint8)


def _seg(sources: list[Dataset], mask: np.ndarray, name: str) -> Dataset:
    algo = hd.AlgorithmIdentificationSequence(name="test-ref", version="1",
                                              family=codes.cid7162.ArtificialIntelligence)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="radstream", manufacturer_model_name="test", software_versions="1",
        device_serial_number="0")


def _store_series(store: ContentStore, datasets: list[Dataset], at: datetime) -> list[InstanceRef]:
    refs = []
    for k, ds in enumerate(datasets):
        obj = store.add_bytes(_bytes(ds))
        refs.append(InstanceRef(sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                                store_uri=obj.uri, sha256=obj.sha256, byte_size=obj.byte_size, instance_number=k + 1,
                                position_along_normal=float(ds.ImagePositionPatient[2])
                                if "ImagePositionPatient" in ds else None, received_at=at))
    return refs


def _events(pk: str, ident: d.Identity, pipeline: str, refs: list[InstanceRef], series_uid: str, modality: str,
            series_desc: str, at: datetime, measurements: list[Measurement], detections: list[Detection],
            seg_uri: str | None, blinding_hash: str | None = None) -> tuple[InferenceRequested, InferenceCompleted]:
    request_id = uuid.uuid4().hex
    req = InferenceRequested(
        producer="test-dispatcher/0", patient_key=pk, request_id=request_id, study_instance_uid=ident.study_uid,
        accession_number=ident.accession, pipeline=pipeline, pipeline_version="1", model_name=f"{pipeline}-ref",
        model_version="1", trigger=Trigger.STUDY_COMPLETE, source_event_id=str(uuid.uuid4()), last_received_at=at,
        series=[SelectedSeries(series_instance_uid=series_uid, revision=1, modality=modality,
                               series_description=series_desc, instances=refs)],
        study_date=ident.study_date)
    done = InferenceCompleted(
        producer="test-worker/0", patient_key=pk, request_id=request_id, study_instance_uid=ident.study_uid,
        accession_number=ident.accession, pipeline=pipeline, pipeline_version="1", model_name=f"{pipeline}-ref",
        model_version="1", result_id=uuid.uuid4().hex, series_instance_uids=[series_uid], measurements=measurements,
        detections=detections, seg_uri=seg_uri, blinding_hash=blinding_hash,
        timings_ms={"infer": 100.0}, started_at=at + timedelta(seconds=1), occurred_at=at + timedelta(seconds=2),
        last_received_at=at, study_date=ident.study_date)
    return req, done


def _write(conn: psycopg.Connection[Any], *events: InferenceRequested | InferenceCompleted) -> None:
    rows = ResultRows()
    for e in events:
        rows.add(e)
    write_result_rows(conn, rows)
    for e in events:
        if isinstance(e, InferenceRequested):
            with conn.transaction():
                index_request(conn, e)


def _ident(n: str, tp: int, name: str, desc: str = "Brain MRI") -> d.Identity:
    return d.Identity(patient_id=f"PID-{n}", patient_name=name, birth_date="19600101", sex="F",
                      study_uid=_uid("web-test", n, tp), study_date=d.study_date(tp, 90), study_time="080000",
                      accession=f"ACC{n}{tp}", study_description=desc, frame_of_reference_uid=_uid("for", n, tp))


def seed(settings: Settings) -> Seeded:
    """Migrate, add users reader1/reader2/qc1/admin1 and write the studies."""
    migrate(settings)
    store = ContentStore.from_settings(settings)
    out = Seeded()
    t0 = datetime(2024, 1, 15, 8, 0, tzinfo=UTC)
    with connect(settings, autocommit=True) as conn:
        for name, role in (("reader1", "reader"), ("reader2", "reader"), ("qc1", "qc"), ("admin1", "admin")):
            add_user(conn, name, role, PASSWORD, name.title())
        # brain: three timepoints of a growing lesion
        for tp, radius in enumerate((8.0, 9.0, 12.0)):
            ident = _ident("B1", tp, "DOE^JANE")
            sources, mask = _mr_series(ident, "AX FLAIR", radius)
            out.depth = len(sources)
            seg = _seg(sources, mask, "lesion")
            at = t0 + timedelta(days=90 * tp)
            refs = _store_series(store, sources, at)
            seg_uri = store.add_bytes(_bytes(seg)).uri
            vol = float(mask.sum()) * 2.0 * 2.0 * 3.0 / 1000.0
            req, done = _events("pk-brain-1", ident, "brain-tumour", refs, str(sources[0].SeriesInstanceUID), "MR",
                                "AX FLAIR", at, [Measurement("volume", "lesion", vol, "mL")], [], seg_uri)
            _write(conn, req, done)
            out.brain_results.append(done.result_id)
            out.brain_accessions.append(ident.accession)
            out.brain_study_uids.append(ident.study_uid)
            out.brain_volumes.append(vol)
        # a brain study whose Patient Name and Series Description hold markup
        ident = _ident("X1", 0, XSS)
        sources, mask = _mr_series(ident, XSS, 7.0, depth=6)
        refs = _store_series(store, sources, t0)
        req, done = _events("pk-xss", ident, "brain-tumour", refs, str(sources[0].SeriesInstanceUID), "MR", XSS, t0,
                            [Measurement("volume", "lesion", 1.5, "mL")], [], None)
        _write(conn, req, done)
        out.xss_result = done.result_id
        # hip radiograph (QC required before readers see it)
        ident = _ident("H1", 0, "ROE^RICHARD", "Pelvis AP")
        rows_, cols = 120, 160
        pix = (np.add.outer(np.arange(rows_), np.arange(cols)) % 256 * 8).astype(np.uint16)
        ds = d.base_dataset(ident, DX, _uid(ident.study_uid, "dx"), _uid(ident.study_uid, "dxs"), "DX", 1,
                            "PELVIS AP", 1, "PELVIS")
        d.set_pixels(ds, pix, 12)
        refs = _store_series(store, [ds], t0)
        dets = [Detection("right hip", "normal", 0.91, [10.0, 40.0, 70.0, 100.0], str(ds.SOPInstanceUID)),
                Detection("left hip", "fracture", 0.83, [90.0, 40.0, 150.0, 100.0], str(ds.SOPInstanceUID))]
        req, done = _events("pk-hip-1", ident, "hip-fracture", refs, str(ds.SeriesInstanceUID), "DX", "PELVIS AP", t0,
                            [], dets, None)
        _write(conn, req, done)
        out.hip_result, out.hip_accession = done.result_id, ident.accession
        # liver, blinded
        ident = _ident("L1", 0, "POE^EDGAR", "CT abdomen")
        sources, mask = _mr_series(ident, "CT PORTAL", 10.0, depth=6)
        refs = _store_series(store, sources, t0)
        out.liver_hash = uuid.uuid4().hex[:16]
        req, done = _events("pk-liver-1", ident, "liver", refs, str(sources[0].SeriesInstanceUID), "MR", "CT PORTAL",
                            t0, [Measurement("volume", "liver left lobe", 480.0, "mL"),
                                 Measurement("volume", "liver right lobe", 1020.0, "mL"),
                                 Measurement("volume", "hepatic vessels", 55.0, "mL")], [], None,
                            blinding_hash=out.liver_hash)
        _write(conn, req, done)
        out.liver_result = done.result_id
    return out


def corrected_seg_bytes(settings: Settings, scale_radius: float = 10.0) -> tuple[bytes, float]:
    """A corrected SEG for the latest brain timepoint's series (same source instances), and its volume in mL."""
    ident = _ident("B1", 2, "DOE^JANE")
    sources, _ = _mr_series(ident, "AX FLAIR", 12.0)
    _, mask = _mr_series(ident, "AX FLAIR", scale_radius)
    seg = _seg(sources, mask, "lesion")
    return _bytes(seg), float(mask.sum()) * 2.0 * 2.0 * 3.0 / 1000.0
