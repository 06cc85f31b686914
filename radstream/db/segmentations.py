"""Human segmentations for the blinded multi-reader study: registration, checks, linking.

A segmentation (DICOM SEG) arrives from a segmentation tool by C-STORE (the feedback sink sees
its InstanceReceived; its calling AE title names the source) or is uploaded by the study lead in
the review app (who names the source). Either way it is checked against the source series it
names, gets a salted hash (its only name for readers) and a row in ``segmentations`` plus one in
``blinding_map`` (source known only to the study lead). A SEG whose source series radstream has
not indexed yet is kept as ``pending`` and checked when the series' images are at hand; it joins
its exam as soon as the exam has a result (the link is the source series).

Uploads are checked in a staging file before anything is stored: a refused upload leaves nothing
in the store. A SEG that came by C-STORE was already stored by the SCP (it acknowledged it), so a
refusal there is a ``refused`` row with the reason, shown to the study lead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from radstream.dicom_seg import (
    SegInfo,
    SegRefused,
    SourceSlice,
    check_against_source,
    inspect_seg,
    read_source_slice,
    seg_volume_ml,
)
from radstream.secrets import blinding_salt
from radstream.settings import Settings
from radstream.store import ContentStore, hash_file, path_for_uri

log = logging.getLogger(__name__)

HASH_LENGTH = 16


@dataclass(frozen=True, slots=True)
class Registration:
    seg_id: str
    blinding_hash: str
    status: str
    reason: str | None
    created: bool


def seg_hash(settings: Settings, seg_id: str) -> str:
    """The salted hash that names a human segmentation to readers."""
    return hmac.new(blinding_salt(settings), f"seg|{seg_id}".encode(), hashlib.sha256).hexdigest()[:HASH_LENGTH]


def reader_order(settings: Settings, reader: str, case_id: str, hashes: list[str]) -> list[str]:
    """The order one reader sees a case's segmentations in: random per reader and case, stable on reload."""
    salt = blinding_salt(settings)
    return sorted(hashes, key=lambda h: hmac.new(salt, f"order|{reader}|{case_id}|{h}".encode(),
                                                 hashlib.sha256).digest())


SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# reference: a validation set's ground truth, compared with each pipeline's results by `radstream report`
# and never shown to readers as one of a blinded case's segmentations
SOURCE_KINDS = ("human", "model", "reference")
AE_TITLE = re.compile(r"^[ -\[\]-~]{1,16}$")  # printable ASCII without backslash


def add_source(conn: psycopg.Connection[Any], name: str, *, kind: str = "human", calling_ae_title: str | None = None,
               description: str | None = None, created_by: str | None = None) -> None:
    """Register a segmentation source (known only to the study lead). Raises ValueError with the reason."""
    ae = (calling_ae_title or "").strip() or None
    if not SOURCE_NAME.match(name):
        raise ValueError("a source name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if ae is not None and not AE_TITLE.match(ae):
        raise ValueError("a calling AE title is 1-16 printable ASCII characters without backslash")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SOURCE_KINDS)}")
    try:
        with conn.transaction():
            conn.execute("INSERT INTO seg_sources (name, kind, calling_ae_title, description, created_by) "
                         "VALUES (%s, %s, %s, %s, %s)", (name, kind, ae, description, created_by))
    except psycopg.errors.UniqueViolation as exc:
        raise ValueError("a source with this name or calling AE title exists") from exc


def source_slices(conn: psycopg.Connection[Any], settings: Settings, series_uid: str) -> list[SourceSlice]:
    rows = conn.execute("SELECT sop_instance_uid, store_uri FROM source_instances WHERE series_instance_uid = %s",
                        (series_uid,)).fetchall()
    out = []
    for sop_uid, uri in rows:
        try:
            out.append(read_source_slice(str(sop_uid), path_for_uri(str(uri), settings.store_root)))
        except (OSError, ValueError) as exc:
            log.warning("source instance %s unreadable: %s", sop_uid, exc)
    return out


def _check(conn: psycopg.Connection[Any], settings: Settings, info: SegInfo) -> str:
    """'valid' or 'pending' (source not indexed yet); raises SegRefused."""
    if len(set(info.referenced_series)) != 1:
        raise SegRefused("the SEG must segment exactly one source series")
    study = conn.execute("SELECT study_instance_uid FROM series WHERE series_instance_uid = %s",
                         (info.referenced_series[0],)).fetchone()
    if study is not None and str(study[0]) != info.study_instance_uid:
        raise SegRefused(f"the SEG belongs to study {info.study_instance_uid} but its source series belongs to "
                         f"another study ({study[0]})")
    source = source_slices(conn, settings, info.referenced_series[0])
    if not source:
        return "pending"
    check_against_source(info, source)
    return "valid"


def _existing(conn: psycopg.Connection[Any], seg_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM segmentations WHERE seg_id = %s", (seg_id,))
        return cur.fetchone()


def _same(existing: dict[str, Any], sha256: str) -> Registration:
    if existing["sha256"] != sha256:
        raise SegRefused("another segmentation with this SOP Instance UID is already registered")
    return Registration(existing["seg_id"], existing["blinding_hash"], existing["status"], existing["reason"], False)


def _insert(conn: psycopg.Connection[Any], settings: Settings, info: SegInfo | None, *, seg_id: str, study_uid: str,
            source: str | None, origin: str, calling_ae: str | None, uri: str, sha256: str, status: str,
            reason: str | None, volumes: dict[str, float], registered_by: str | None) -> Registration:
    h = seg_hash(settings, seg_id)
    total = round(sum(volumes.values()), 3) if volumes else None
    with conn.transaction():
        cur = conn.execute(
            """INSERT INTO segmentations (seg_id, study_instance_uid, series_instance_uid, seg_series_instance_uid,
                   source, origin, calling_ae_title, seg_uri, sha256, blinding_hash, status, reason, frames,
                   volumes_ml, total_ml, registered_by, validated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s,
                       CASE WHEN %s = 'pending' THEN NULL ELSE now() END)
               ON CONFLICT (seg_id) DO NOTHING""",
            (seg_id, study_uid, info.referenced_series[0] if info else None, info.series_instance_uid if info else None,
             source, origin, calling_ae, uri, sha256, h, status, reason, info.frames if info else None,
             json.dumps({k: round(v, 3) for k, v in volumes.items()}), total, registered_by, status))
        created = cur.rowcount == 1
        if created and source is not None and status != "refused":
            conn.execute("""INSERT INTO blinding_map (blinding_hash, source, result_id, seg_uri)
                            VALUES (%s, %s, NULL, %s) ON CONFLICT (blinding_hash) DO NOTHING""", (h, source, uri))
    if not created:
        existing = _existing(conn, seg_id)
        assert existing is not None
        return _same(existing, sha256)
    return Registration(seg_id, h, status, reason, True)


def register_upload(conn: psycopg.Connection[Any], settings: Settings, data: bytes, *, source: str,
                    registered_by: str) -> Registration:
    """Register a SEG uploaded by the study lead. Raises SegRefused; a refused file is never stored."""
    kind = conn.execute("SELECT kind FROM seg_sources WHERE name = %s", (source,)).fetchone()
    if kind is None:
        raise SegRefused(f"{source!r} is not a registered segmentation source")
    staging = Path(settings.home) / "staging" / "uploads"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.NamedTemporaryFile(dir=staging, suffix=".dcm") as fh:
        fh.write(data)
        fh.flush()
        path = Path(fh.name)
        info = inspect_seg(path)
        sha256, _size = hash_file(path)
        existing = _existing(conn, info.sop_instance_uid)
        if existing is not None:
            return _same(existing, sha256)
        status = _check(conn, settings, info)
        try:
            _total, volumes = seg_volume_ml(path)
        except Exception as exc:  # the pixel data itself is broken
            raise SegRefused(f"the SEG's pixel data cannot be decoded ({type(exc).__name__})") from exc
        stored = ContentStore.from_settings(settings).add_bytes(data)
    return _insert(conn, settings, info, seg_id=info.sop_instance_uid, study_uid=info.study_instance_uid,
                   source=source, origin="upload", calling_ae=None, uri=stored.uri, sha256=sha256, status=status,
                   reason=None, volumes=volumes, registered_by=registered_by)


def register_received(conn: psycopg.Connection[Any], settings: Settings, *, sop_instance_uid: str,
                      study_instance_uid: str, calling_ae_title: str, store_uri: str, sha256: str) -> Registration:
    """Register a SEG the SCP stored (C-STORE from a segmentation tool); a refusal is kept with its reason."""
    existing = _existing(conn, sop_instance_uid)
    if existing is not None:
        try:
            return _same(existing, sha256)
        except SegRefused:
            log.warning("segmentation %s re-sent with other content: the first copy is kept", sop_instance_uid)
            return Registration(existing["seg_id"], existing["blinding_hash"], existing["status"],
                                existing["reason"], False)
    row = conn.execute("SELECT name FROM seg_sources WHERE calling_ae_title = %s",
                       (calling_ae_title.strip(),)).fetchone()
    source = str(row[0]) if row else None
    info: SegInfo | None = None
    volumes: dict[str, float] = {}
    try:
        if source is None:
            raise SegRefused(f"calling AE title {calling_ae_title.strip()!r} is not a registered segmentation source")
        path = path_for_uri(store_uri, settings.store_root)
        info = inspect_seg(path)
        status = _check(conn, settings, info)
        volumes = seg_volume_ml(path)[1]
        reason = None
    except SegRefused as exc:
        status, reason = "refused", str(exc)
    except Exception as exc:  # unreadable pixel data or a missing file: refused, with the reason
        status, reason = "refused", f"the SEG cannot be read ({type(exc).__name__})"
    reg = _insert(conn, settings, info, seg_id=sop_instance_uid, study_uid=study_instance_uid,
                  source=source, origin="dimse",
                  calling_ae=calling_ae_title.strip(), uri=store_uri, sha256=sha256, status=status, reason=reason,
                  volumes=volumes, registered_by=None)
    if status == "refused":
        log.warning("segmentation %s from %s refused: %s", sop_instance_uid, calling_ae_title.strip(), reason)
    return reg


def check_pending(conn: psycopg.Connection[Any], settings: Settings, series_uids: list[str] | None = None) -> int:
    """Check pending segmentations whose source series is now indexed; returns how many were decided."""
    rows = conn.execute(
        """SELECT s.seg_id, s.seg_uri FROM segmentations s
           WHERE s.status = 'pending' AND (%s::text[] IS NULL OR s.series_instance_uid = ANY(%s::text[]))
             AND EXISTS (SELECT 1 FROM source_instances i WHERE i.series_instance_uid = s.series_instance_uid)""",
        (series_uids, series_uids)).fetchall()
    decided = 0
    for seg_id, uri in rows:
        try:
            info = inspect_seg(path_for_uri(str(uri), settings.store_root))
            status = _check(conn, settings, info)
            reason = None
        except SegRefused as exc:
            status, reason = "refused", str(exc)
        except OSError as exc:
            status, reason = "refused", f"the SEG cannot be read ({type(exc).__name__})"
        if status == "pending":
            continue
        with conn.transaction():
            conn.execute("UPDATE segmentations SET status = %s, reason = %s, validated_at = now() "
                         "WHERE seg_id = %s AND status = 'pending'", (status, reason, seg_id))
            if status == "refused":
                conn.execute("DELETE FROM blinding_map b USING segmentations s WHERE s.seg_id = %s "
                             "AND b.blinding_hash = s.blinding_hash AND b.result_id IS NULL", (seg_id,))
        decided += 1
    return decided
