"""The ingest SCP's limits against real peers: associations per peer, instance size, bytes per
association, idle associations; dead letters without PHI; the dead-letter topic's retention."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from radstream.producers.sample_series import CT_IMAGE, write_series
from radstream.producers.scu import send_paths
from radstream.producers.structure import file_meta_end

from radstream.events.models import DeadLetter, InstanceReceived
from radstream.kafka.topics import create_topics, describe_topics
from radstream.settings import Settings
from radstream.store import ContentStore
from tests.integration.ingest_support import consume, ingest_settings, running_ingest
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.dicom]


def _with_dicom(s: Settings, **dicom: object) -> Settings:
    return s.model_copy(update={"dicom": s.dicom.model_copy(update=dicom)})


def _stored_objects(s: Settings) -> list[Path]:
    return [p for p in (s.store_root / "sha256").rglob("*") if p.is_file()] if (s.store_root / "sha256").exists() \
        else []


def _incoming_files(s: Settings) -> list[Path]:
    """Partial files in the store's incoming folder (where pynetdicom writes a data set as it arrives)."""
    return [p for p in ContentStore.from_settings(s).incoming.rglob("*") if p.is_file()]


def _associate(port: int, calling: str = "LIMITSCU", bind: str = "127.0.0.1") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.requested_contexts = [build_context(CT_IMAGE)]
    return ae.associate("127.0.0.1", port, ae_title="RADSTREAM", bind_address=(bind, 0))


def _instances(s: Settings, expected: int, timeout: float) -> list[InstanceReceived]:
    return [e for e in consume(s, s.topic("instances"), expected, timeout=timeout) if isinstance(e, InstanceReceived)]


def test_a_peer_over_its_association_limit_is_refused(kafka_settings: Settings) -> None:
    s = _with_dicom(ingest_settings(kafka_settings, publish=False), max_associations_per_peer=2)
    with running_ingest(s) as server:
        first, second = _associate(server.port), _associate(server.port)
        assert first.is_established and second.is_established
        third = _associate(server.port)
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert rj is not None
        # rejected-transient, by the service provider (presentation), local-limit-exceeded: try again later
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        # the limit is per remote address: another address is served meanwhile
        other = _associate(server.port, bind="127.0.0.2")
        assert other.is_established
        other.release()
        # when one of the first two ends, the peer may open another
        first.release()

        def reopened() -> bool:
            a = _associate(server.port)
            if a.is_established:
                a.release()
                return True
            return False

        eventually(reopened, timeout=10, what="a new association once one of the peer's two ended")
        second.release()
        assert server.metrics.associations.labels("rejected")._value.get() == 1.0


def test_an_oversized_instance_is_refused_and_nothing_is_stored(kafka_settings: Settings, tmp_path: Path) -> None:
    big = write_series(tmp_path / "big", 1, rows=512, columns=512, seed=1)  # ~512 kB
    small = write_series(tmp_path / "small", 1, rows=16, columns=16, seed=2)
    limit = 256 * 1024
    assert big[0].stat().st_size > limit > small[0].stat().st_size
    # small PDUs, so the instance arrives in many P-DATA and the SCP stops writing it at the limit
    s = _with_dicom(ingest_settings(kafka_settings, max_pdu_size=16384), max_instance_bytes=limit)
    with running_ingest(s) as server:
        refused = send_paths(big, port=server.port)
        assert refused.statuses == {"0xA700": 1}, refused.line()
        assert _stored_objects(s) == []
        assert _instances(s, 1, timeout=6) == []  # no event
        letters = [e for e in consume(s, s.topic("deadletter"), 1, timeout=20) if isinstance(e, DeadLetter)]
        assert len(letters) == 1 and letters[0].error_type == "DIMSE 0xA700"
        assert "max_instance_bytes" in letters[0].error
        assert "or more" in letters[0].error  # cut while arriving, not after it was all written
        assert letters[0].payload == b""
        # the SCP keeps serving, and an instance under the limit is stored
        ok = send_paths(small, port=server.port)
        assert ok.statuses == {"0x0000": 1}, ok.line()
        events = _instances(s, 1, timeout=20)
        assert [e.sop_instance_uid for e in events] == [str(pydicom.dcmread(small[0]).SOPInstanceUID)]
    assert len(_stored_objects(s)) == 1
    assert _incoming_files(s) == []  # the cut file is gone too


def test_an_association_over_its_byte_budget_is_refused_then_aborted(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "series", 6, rows=64, columns=64, seed=3)  # ~8.5 kB each
    size = files[0].stat().st_size
    s = _with_dicom(ingest_settings(kafka_settings), max_association_bytes=3 * size + size // 2)
    with running_ingest(s) as server:
        summary = send_paths(files, port=server.port)  # one association
        labels = [r.label for r in summary.results]
        # three fit; the fourth crosses the budget (0xA700, not stored); at the fifth the SCP aborts
        assert labels.count("0x0000") == 3 and labels.count("0xA700") == 1, labels
        assert len(labels) == 6 and labels[:4] == ["0x0000", "0x0000", "0x0000", "0xA700"], labels
        assert len(_stored_objects(s)) == 3
        assert server.metrics.associations.labels("aborted")._value.get() >= 1.0
        # the budget is per association: a new one stores again
        refused = next(r for r in summary.results if r.label == "0xA700")
        again = send_paths([refused.path], port=server.port)
        assert again.statuses == {"0x0000": 1}, again.line()
        events = _instances(s, 4, timeout=20)
    assert sorted(e.sop_instance_uid for e in events) == sorted(
        [r.sop_instance_uid for r in summary.results if r.label == "0x0000"] + [refused.sop_instance_uid])
    assert len(_stored_objects(s)) == 4


def test_an_idle_association_is_closed(kafka_settings: Settings) -> None:
    s = _with_dicom(ingest_settings(kafka_settings, publish=False), idle_timeout_s=1.0)
    with running_ingest(s) as server:
        assoc = _associate(server.port)
        assert assoc.is_established
        started = time.monotonic()
        eventually(lambda: not assoc.is_established, timeout=15,
                   what="the SCP to end the idle association")
        assert assoc.is_aborted
        assert time.monotonic() - started < 10
        assert server.server is not None
        eventually(lambda: not server.server.active_associations, timeout=10,
                   what="the SCP's association thread to end")


def _bad_instance(tmp: Path) -> Path:
    """A Part 10 file with PHI whose file meta (so the C-STORE command) says CT, its data set MR: 0xA900."""
    (mr,) = write_series(tmp / "mr", 1, modality="MR", rows=16, columns=16, patient_id="PID-4711", seed=4)
    ds = pydicom.dcmread(mr)
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19420101"
    ds.AccessionNumber = "ACC-93812"
    ds.ReferringPhysicianName = "Dr^Who"
    ds.InstitutionName = "Saint Elsewhere"
    ds.save_as(mr, enforce_file_format=True)
    with open(mr, "rb") as fh:
        body = mr.read_bytes()[file_meta_end(fh):]
    meta = pydicom.Dataset()
    meta.file_meta = pydicom.dataset.FileMetaDataset()
    meta.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    bad = tmp / "bad.dcm"
    meta.save_as(bad, enforce_file_format=True)
    with open(bad, "rb") as fh:
        end = file_meta_end(fh)
    bad.write_bytes(bad.read_bytes()[:end] + body)
    return bad


@pytest.mark.parametrize("keep_phi", [False, True])
def test_dead_letters_hold_no_phi_unless_kept(kafka_settings: Settings, tmp_path: Path, keep_phi: bool) -> None:
    bad = _bad_instance(tmp_path)
    s = ingest_settings(kafka_settings, deadletter_keep_phi=keep_phi)
    with running_ingest(s) as server:
        summary = send_paths([bad], port=server.port)
        assert summary.statuses == {"0xA900": 1}, summary.line()
        letters = [e for e in consume(s, s.topic("deadletter"), 1, timeout=30) if isinstance(e, DeadLetter)]
    (letter,) = letters
    sop = str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    phi = [b"Doe^Jane", b"PID-4711", b"19420101", b"ACC-93812", b"Dr^Who", b"Saint Elsewhere"]
    if keep_phi:
        assert all(v in letter.payload for v in phi)
    else:
        assert [v for v in phi if v in letter.payload] == []
    # enough to find and diagnose the instance either way
    assert sop.encode() in letter.payload
    assert b"1.2.840.10008.1.2.1" in letter.payload[:400]  # the transfer syntax, in the file meta
    assert b"1.2.840.10008.5.1.4.1.1.4" in letter.payload  # the SOP class the data set claims
    assert "differs" in letter.error and "Doe" not in letter.error


def test_the_deadletter_topic_has_the_configured_retention(kafka_settings: Settings) -> None:
    # kafka_settings created its topics with the defaults
    retention = {t.name: t.config.get("retention.ms") for t in describe_topics(kafka_settings)}
    assert retention[kafka_settings.topic("deadletter")] == str(7 * 24 * 3600 * 1000)
    assert retention[kafka_settings.topic("instances")] == str(30 * 24 * 3600 * 1000)
    custom = kafka_settings.model_copy(update={"kafka": kafka_settings.kafka.model_copy(
        update={"topic_prefix": kafka_settings.kafka.topic_prefix + "r", "deadletter_retention_ms": 2 * 3600 * 1000})})
    create_topics(custom)
    retention = {t.name: t.config.get("retention.ms") for t in describe_topics(custom)}
    assert retention[custom.topic("deadletter")] == str(2 * 3600 * 1000)
