"""Hostile input: each gets the right DIMSE status, a dead letter without pixel data, no event,
nothing outside the store, and the SCP keeps serving."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config, build_context
from radstream.producers.sample_series import write_series
from radstream.producers.scu import send_paths
from radstream.producers.structure import file_meta_end

from radstream.events.models import DeadLetter, InstanceReceived
from radstream.settings import Settings
from tests.integration.ingest_support import consume, ingest_settings, running_ingest
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.dicom]

CT = "1.2.840.10008.5.1.4.1.1.2"


def _send_raw(port: int, path: Path, sop_class: str, ts: str) -> int | None:
    """C-STORE the bytes after the file meta of ``path`` as they are (no validation, no encoding)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADSTREAM")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        if assoc.is_established:
            assoc.release()


def _file_with(tmp: Path, name: str, dataset: bytes, sop_class: str, sop_instance: str, ts: str) -> Path:
    """A Part 10 file whose meta names the given UIDs and whose data set is ``dataset`` verbatim."""
    meta_ds = pydicom.Dataset()
    meta_ds.file_meta = pydicom.dataset.FileMetaDataset()
    meta_ds.file_meta.MediaStorageSOPClassUID = sop_class
    meta_ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    meta_ds.file_meta.TransferSyntaxUID = ts
    p = tmp / name
    meta_ds.save_as(p, enforce_file_format=True)
    with open(p, "rb") as fh:
        end = file_meta_end(fh)
    p.write_bytes(p.read_bytes()[:end] + dataset)
    return p


def _dataset_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(file_meta_end(fh))
        return fh.read()


def _still_serving(port: int, tmp: Path) -> str:
    good = write_series(tmp / "good", 1, rows=16, columns=16, seed=7)
    summary = send_paths(good, port=port)
    assert summary.statuses == {"0x0000": 1}, summary.line()
    return str(pydicom.dcmread(good[0], stop_before_pixels=True).SOPInstanceUID)


def test_bad_instances_are_refused_dead_lettered_and_the_scp_keeps_serving(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    s = ingest_settings(kafka_settings)
    ct = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(ct)
    ts = str(ds.file_meta.TransferSyntaxUID)
    body = _dataset_bytes(ct)
    cases: list[tuple[str, Path, str, str, int]] = []

    truncated = _file_with(tmp_path, "truncated.dcm", body[: len(body) - 5000], CT, ds.SOPInstanceUID, ts)
    cases.append(("truncated", truncated, CT, ts, 0xC000))

    bad_study = ds.copy()
    bad_study.StudyInstanceUID = "../../x"
    bad_study.save_as(tmp_path / "badstudy.dcm", enforce_file_format=True)
    cases.append(("study ../../x", tmp_path / "badstudy.dcm", CT, ts, 0xA900))

    bad_sop = ds.copy()
    bad_sop.SOPInstanceUID = "../../x"
    p = _file_with(tmp_path, "badsop.dcm", _dataset_bytes_of(bad_sop, tmp_path), CT, "../../x", ts)
    cases.append(("SOP instance ../../x", p, CT, ts, 0xC000))

    zero = _file_with(tmp_path, "zero.dcm", b"", CT, ds.SOPInstanceUID, ts)
    cases.append(("zero-length", zero, CT, ts, 0xC000))

    garbage = _file_with(tmp_path, "garbage.dcm", b"\x00\x01not dicom at all" * 10, CT, ds.SOPInstanceUID, ts)
    cases.append(("garbage", garbage, CT, ts, 0xC000))

    # the data set says MR while the command says CT
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mismatch = _file_with(tmp_path, "mismatch.dcm", _dataset_bytes(Path(get_testdata_file("MR_small.dcm"))),
                          CT, mr.SOPInstanceUID, str(mr.file_meta.TransferSyntaxUID))
    cases.append(("SOP class mismatch", mismatch, CT, str(mr.file_meta.TransferSyntaxUID), 0xA900))

    with running_ingest(s) as server:
        for what, path, sop_class, syntax, expected in cases:
            assert _send_raw(server.port, path, sop_class, syntax) == expected, what

        # an unknown SOP class: the presentation context is refused, nothing can be sent on it
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context("1.2.3.4.5.6.7", [ts])
        ae.add_requested_context(CT, [ts])
        assoc = ae.associate("127.0.0.1", server.port, ae_title="RADSTREAM")
        assert assoc.is_established
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        assert accepted == {CT}
        unknown = ds.copy()
        unknown.SOPClassUID = "1.2.3.4.5.6.7"
        unknown.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7"
        with pytest.raises(ValueError):
            assoc.send_c_store(unknown)
        assoc.release()

        good_sop = _still_serving(server.port, tmp_path)

        letters = [e for e in consume(s, s.topic("deadletter"), len(cases), timeout=30) if isinstance(e, DeadLetter)]
        assert sorted(int(e.error_type.split("0x")[1], 16) for e in letters) == sorted(c[4] for c in cases)
        for e in letters:
            assert b"\xe0\x7f\x10\x00" not in e.payload[132:], "pixel data in a dead letter"
            assert len(e.payload) <= ct.stat().st_size - len(ds.PixelData)  # header bytes only
            assert "CompressedSamples" not in e.error and "../../x" not in e.error
        events = consume(s, s.topic("instances"), 1, timeout=20)
        assert [e.sop_instance_uid for e in events if isinstance(e, InstanceReceived)] == [good_sop]
        failures = {k[0]: v for k, v in _counter_values(server.metrics.failures).items()}
        assert failures == {"0xC000": 4.0, "0xA900": 2.0}

    # nothing escaped the store: only content-addressed objects (the good instance) exist, beside the
    # site secret's fingerprint that the SCP keeps in the store root
    from radstream.secrets import fingerprint_path

    objects = [p for p in s.store_root.rglob("*") if p.is_file() and p != fingerprint_path(s)]
    assert all(p.parent.parent.parent.name == "sha256" for p in objects), objects
    assert len(objects) == 1
    assert not (s.store_root.parent / "x").exists()


def _dataset_bytes_of(ds: pydicom.Dataset, tmp: Path) -> bytes:
    p = tmp / "tmp-encode.dcm"
    ds.save_as(p, enforce_file_format=True)
    return _dataset_bytes(p)


def _counter_values(counter: object) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for metric in counter.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out


def test_association_dropped_mid_transfer(kafka_settings: Settings, tmp_path: Path) -> None:
    s = ingest_settings(kafka_settings)
    big = write_series(tmp_path / "big", 1, rows=4096, columns=4096, seed=3)[0]  # 32 MB
    with running_ingest(s) as server:
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title="DROPPER")
        ae.add_requested_context(build_context(CT, ["1.2.840.10008.1.2.1"]).abstract_syntax, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", server.port, ae_title="RADSTREAM")
        assert assoc.is_established
        dul_socket = assoc.dul.socket
        raw = dul_socket.socket
        assert raw is not None
        sent = 0

        def send_then_drop(data: bytes) -> None:
            # deliver the first 10 MB of the transfer, then the network goes away: RST, nothing more
            nonlocal sent
            if sent > 10_000_000:
                dul_socket.event_queue.put("Evt17")
                return
            view = memoryview(data)[: max(0, 10_000_001 - sent)]
            raw.sendall(view)
            sent += len(view)
            if sent > 10_000_000:
                time.sleep(0.5)  # let the SCP write what it got
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
                dul_socket.event_queue.put("Evt17")

        dul_socket.send = send_then_drop  # type: ignore[method-assign]
        sender = threading.Thread(target=lambda: _quiet(assoc.send_c_store, big), daemon=True)
        sender.start()
        incoming = s.store_root / "incoming"
        eventually(lambda: any(p.stat().st_size > 1_000_000 for p in incoming.iterdir()), timeout=20,
                   what="a partial data set on disk")
        sender.join(30)
        time.sleep(0.5)
        good_sop = _still_serving(server.port, tmp_path)
        events = consume(s, s.topic("instances"), 1, timeout=20)
        assert [e.sop_instance_uid for e in events if isinstance(e, InstanceReceived)] == [good_sop]
    assert len([p for p in (s.store_root / "sha256").rglob("*.dcm")]) == 1


def _quiet(fn: object, *args: object) -> None:
    with contextlib.suppress(Exception):
        fn(*args)  # type: ignore[operator]
