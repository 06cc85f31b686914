"""Helpers shared by the ingest integration tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from confluent_kafka import Consumer
from pydicom.data import get_testdata_files
from radstream.producers.scp import IngestServer

from radstream.devenv.process import free_port
from radstream.events.codec import codec_for
from radstream.events.models import Event, InstanceReceived
from radstream.settings import Settings
from radstream.store import path_for_uri


@dataclass(frozen=True)
class SampleFile:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    dataset_bytes: bytes  # what follows the file meta: what goes over the wire


def dataset_bytes(path: Path) -> bytes:
    from radstream.producers.structure import file_meta_end

    with open(path, "rb") as fh:
        start = file_meta_end(fh)
        fh.seek(start)
        return fh.read()


def valid_testdata_files() -> list[SampleFile]:
    """pydicom's own test files (those shipped in the pydicom package) that are valid storage instances, one
    per distinct data set.

    Valid here means (checked independently of the SCP): a file meta with a transfer syntax,
    readable in full by pydicom without warnings, SOP Class/Instance UIDs equal to the
    file meta's, Study and Series Instance UIDs present, and not one of pydicom's files
    that are truncated on purpose.
    """
    seen: set[bytes] = set()
    out: list[SampleFile] = []
    bundled = Path(pydicom.data.__file__).resolve().parent  # not pydicom-data's larger store (a dev extra)
    for name in sorted(get_testdata_files()):
        p = Path(name)
        if "truncated" in p.name or not p.resolve().is_relative_to(bundled):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                ds = pydicom.dcmread(p)
            meta = ds.file_meta
            ok = (
                "TransferSyntaxUID" in meta
                and ds.get("SOPClassUID") == meta.get("MediaStorageSOPClassUID")
                and ds.get("SOPInstanceUID") == meta.get("MediaStorageSOPInstanceUID")
                and ds.get("SOPInstanceUID")
                and ds.get("StudyInstanceUID")
                and ds.get("SeriesInstanceUID")
            )
        except Exception:
            continue
        if not ok:
            continue
        body = dataset_bytes(p)
        digest = hashlib.sha256(body).digest()
        if digest in seen:
            continue
        seen.add(digest)
        out.append(SampleFile(p, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                              str(ds.SeriesInstanceUID), str(meta.TransferSyntaxUID), body))
    return out


def ingest_settings(base: Settings, **ingest: Any) -> Settings:
    dicom = base.dicom.model_copy(update={"port": free_port(), "bind_address": "127.0.0.1"})
    ing = base.ingest.model_copy(update={"metrics_port": 0, **ingest})
    return base.model_copy(update={"dicom": dicom, "ingest": ing})


@contextlib.contextmanager
def running_ingest(settings: Settings) -> Iterator[IngestServer]:
    server = IngestServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def consume(settings: Settings, topic: str, expected: int, timeout: float = 60.0, settle: float = 1.0) -> list[Event]:
    """An independent consumer: read ``topic`` from the start until ``expected`` events arrived
    (then ``settle`` more seconds, to catch duplicates) or ``timeout`` passed."""
    codec = codec_for(settings)
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": f"ingest-test-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is not None and time.monotonic() > settle_until:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value()
            assert isinstance(value, bytes)
            events.append(codec.decode(value))
            if len(events) >= expected and settle_until is None:
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    return events


def stored_bytes(uri: str, settings: Settings) -> bytes:
    return path_for_uri(uri, settings.store_root).read_bytes()


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RADSTREAM_HOME": str(settings.home),
        "RADSTREAM_SITE_SECRET": settings.site_secret.get_secret_value(),
        "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RADSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RADSTREAM_DICOM__PORT": str(settings.dicom.port),
        "RADSTREAM_DICOM__BIND_ADDRESS": "127.0.0.1",
        "RADSTREAM_INGEST__METRICS_PORT": "0",
    })
    env.update(extra)
    return env


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def events_by_sop(settings: Settings, expected: int, timeout: float) -> dict[str, list[InstanceReceived]]:
    """Every InstanceReceived on the instances topic (at least ``expected``), by SOP Instance UID."""
    out: dict[str, list[InstanceReceived]] = defaultdict(list)
    for e in consume(settings, settings.topic("instances"), expected, timeout=timeout, settle=2.0):
        assert isinstance(e, InstanceReceived)
        out[e.sop_instance_uid].append(e)
    return out
