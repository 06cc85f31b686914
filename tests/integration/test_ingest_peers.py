"""Real peers against the ingest SCP: dcmtk's echoscu/storescu and radstream's own SCU.

Every valid storage instance that pydicom ships is sent in its own transfer syntax; an
independent consumer must find exactly one InstanceReceived per instance, with the right
UIDs, and the bytes behind its store URI must hash to its SHA-256 and hold the data set
exactly as sent.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from radstream.producers.scu import send_paths
from radstream.producers.structure import file_meta_end

from radstream.events.models import InstanceReceived
from radstream.settings import Settings
from tests.integration.ingest_support import (
    SampleFile,
    consume,
    ingest_settings,
    running_ingest,
    stored_bytes,
    valid_testdata_files,
)

pytestmark = [pytest.mark.kafka, pytest.mark.dicom]


@pytest.fixture(scope="module")
def samples() -> list[SampleFile]:
    files = valid_testdata_files()
    assert len(files) > 100
    assert len({f.transfer_syntax_uid for f in files}) >= 10  # LE, BE, deflate, JPEG, JPEG-LS, J2K, RLE
    return files


def _stored_dataset(e: InstanceReceived, settings: Settings) -> bytes:
    data = stored_bytes(e.store_uri, settings)
    with open(Path(e.store_uri.removeprefix("file://")), "rb") as fh:
        return data[file_meta_end(fh):]


def _check(
    settings: Settings, samples: list[SampleFile], calling: str, called: str, exact_bytes: bool = True
) -> list[InstanceReceived]:
    events = consume(settings, settings.topic("instances"), len(samples), timeout=30)
    assert all(isinstance(e, InstanceReceived) for e in events)
    received = [e for e in events if isinstance(e, InstanceReceived)]
    by_key = Counter((e.sop_instance_uid, e.sha256) for e in received)
    dups = [(e.sop_instance_uid, e.event_id, e.received_at, e.transfer_syntax_uid) for e in received
            if by_key[(e.sop_instance_uid, e.sha256)] > 1]
    assert not dups, f"duplicate events: {dups}"
    got = {(e.sop_instance_uid, e.transfer_syntax_uid) for e in received}
    missing = [
        (f.path.name, f.transfer_syntax_uid) for f in samples if (f.sop_instance_uid, f.transfer_syntax_uid) not in got
    ]
    assert not missing, f"no event in the sent transfer syntax for {missing}"
    assert len(received) == len(samples)
    by_sop: dict[str, list[InstanceReceived]] = {}
    for e in received:
        by_sop.setdefault(e.sop_instance_uid, []).append(e)
    for f in samples:
        matches = [e for e in by_sop.get(f.sop_instance_uid, []) if e.transfer_syntax_uid == f.transfer_syntax_uid]
        if exact_bytes:  # pydicom ships a few instances twice in one transfer syntax with different bytes
            matches = [e for e in matches if _stored_dataset(e, settings) == f.dataset_bytes]
        assert len(matches) == 1, f"{f.path.name}: {len(matches)} events"
        e = matches[0]
        assert (e.sop_class_uid, e.study_instance_uid, e.series_instance_uid) == (
            f.sop_class_uid, f.study_instance_uid, f.series_instance_uid)
        assert (e.calling_ae_title, e.called_ae_title) == (calling, called)
        data = stored_bytes(e.store_uri, settings)
        assert hashlib.sha256(data).hexdigest() == e.sha256
        assert len(data) == e.byte_size
        assert e.store_uri.endswith(f"/{e.sha256}.dcm")
        # written as received: the stored data set is byte for byte the sender's
        path = Path(e.store_uri.removeprefix("file://"))
        with open(path, "rb") as fh:
            start = file_meta_end(fh)
        if exact_bytes:
            assert data[start:] == f.dataset_bytes, f.path.name
        else:  # the sender re-encoded the header; the pixel data must still be exactly the file's
            sent, got = pydicom.dcmread(f.path), pydicom.dcmread(path)
            assert got.SOPInstanceUID == sent.SOPInstanceUID
            assert got.get("PixelData") == sent.get("PixelData"), f.path.name
        assert len(e.patient_key) == 64
    return received


def test_echoscu(kafka_settings: Settings) -> None:
    s = ingest_settings(kafka_settings)
    with running_ingest(s) as server:
        out = subprocess.run(
            ["echoscu", "-aet", "ECHOER", "-aec", "RADSTREAM", "127.0.0.1", str(server.port)],
            capture_output=True, text=True, timeout=30,
        )
    assert out.returncode == 0, out.stderr


# storescu's proposal option that makes it send a file in its own transfer syntax
STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def test_dcmtk_storescu_sends_pydicom_testdata(kafka_settings: Settings, samples: list[SampleFile]) -> None:
    s = ingest_settings(kafka_settings)
    # dcmtk re-encodes what it sends, so two files of one instance in one transfer syntax
    # can arrive as the same bytes (a resend, same event id): send one file per pair
    unique = {(f.sop_instance_uid, f.transfer_syntax_uid): f for f in samples}
    samples = list(unique.values())
    groups: dict[str, list[SampleFile]] = {}
    for f in samples:
        groups.setdefault(f.transfer_syntax_uid, []).append(f)
    assert set(groups) <= set(STORESCU_PROPOSAL)
    unreadable: set[str] = set()
    with running_ingest(s) as server:
        for ts, files in groups.items():
            out = subprocess.run(
                ["storescu", "-R", STORESCU_PROPOSAL[ts], "-aet", "DCMTK", "-aec", "RADSTREAM", "-nh",
                 "127.0.0.1", str(server.port), *[str(f.path) for f in files]],
                capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            )
            # files dcmtk itself cannot read are never sent (e.g. an odd-length RLE frame)
            log = out.stdout + out.stderr
            unreadable |= set(re.findall(
                r"(?:No SOP Class or Instance UID|missing SOP class \(or instance\)) in file: ([^\s,]+)", log))
            failed = [line for line in log.splitlines() if "Store SCU Failed" in line or "Store Failed" in line]
            assert len(failed) <= len(unreadable), out.stderr[-2000:]
        assert len(unreadable) <= 2, unreadable
        samples = [f for f in samples if str(f.path) not in unreadable]
        _check(s, samples, "DCMTK", "RADSTREAM", exact_bytes=False)
        assert server.metrics.failures._metrics == {}  # no failure status of any kind


def test_own_scu_sends_to_a_pipeline_ae_title(kafka_settings: Settings, samples: list[SampleFile]) -> None:
    s = ingest_settings(kafka_settings, called_ae_titles={"BRAINMR": ["brain-tumour"]})
    with running_ingest(s) as server:
        summary = send_paths([f.path for f in samples], port=server.port, called_ae="BRAINMR",
                             calling_ae="MODALITY1", associations=3)
        assert summary.failed == 0, summary.line()
        assert summary.statuses == {"0x0000": len(samples)}
        events = _check(s, samples, "MODALITY1", "BRAINMR")
    assert all(e.peer_address.startswith("127.0.0.1:") for e in events)


def test_association_control(kafka_settings: Settings) -> None:
    s = ingest_settings(kafka_settings)
    s = s.model_copy(update={"dicom": s.dicom.model_copy(update={
        "allowed_calling_ae_titles": ["GOODSCU"], "allowed_peers": ["127.0.0.0/8"]})})
    with running_ingest(s) as server:
        def associate(calling: str, called: str) -> tuple[bool, bool]:
            ae = AE(ae_title=calling)
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", server.port, ae_title=called)
            established, rejected = assoc.is_established, assoc.is_rejected
            if established:
                assert assoc.send_c_echo().Status == 0
                assoc.release()
            return established, rejected

        assert associate("GOODSCU", "RADSTREAM") == (True, False)
        assert associate("BADSCU", "RADSTREAM") == (False, True)
        assert associate("GOODSCU", "NOSUCHAE") == (False, True)
    s2 = s.model_copy(update={"dicom": s.dicom.model_copy(update={"allowed_calling_ae_titles": [],
                                                                  "allowed_peers": ["10.0.0.0/8"]})})
    with running_ingest(s2) as server:
        ae = AE(ae_title="ANY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", server.port, ae_title="RADSTREAM")
        assert assoc.is_rejected
