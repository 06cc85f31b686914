"""Secure defaults of the ingest side: SCP settings, PHI out of dead letters, dead-letter retention."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from radstream.producers.header import header_bytes
from radstream.producers.limits import AssociationBudget
from radstream.producers.phi import PHI_TAGS, strip_phi
from typer.testing import CliRunner

from radstream.kafka.topics import topic_specs
from radstream.settings import IngestTlsSettings, Settings

pytestmark = pytest.mark.unit

CT = "1.2.840.10008.5.1.4.1.1.2"
PHI_VALUES = [b"Doe^Jane", b"PID-4711", b"19420101", b"ACC-93812", b"Dr^Who", b"Saint Elsewhere",
              b"12 Privet Drive", b"OTHER-ID-1", b"NESTED-ACC-5", b"PRIVATE-SECRET", b"DEEP-NAME"]


def _dataset(ts: str, undefined_lengths: bool = False) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-4711"
    ds.PatientBirthDate = "19420101"
    ds.AccessionNumber = "ACC-93812"
    ds.ReferringPhysicianName = "Dr^Who"
    ds.InstitutionName = "Saint Elsewhere"
    ds.PatientAddress = "12 Privet Drive"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 4, 4
    other = Dataset()
    other.PatientID = "OTHER-ID-1"
    ds.OtherPatientIDsSequence = Sequence([other])
    # PHI inside a sequence that is not itself on the list, two levels deep
    deep = Dataset()
    deep.PatientName = "DEEP-NAME"
    deep.ReferencedSOPInstanceUID = generate_uid()
    ref = Dataset()
    ref.AccessionNumber = "NESTED-ACC-5"
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = generate_uid()
    ref.ReferencedSeriesSequence = Sequence([deep])
    ds.ReferencedStudySequence = Sequence([ref])
    block = ds.private_block(0x0011, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", "PRIVATE-SECRET")
    if undefined_lengths:
        for keyword in ("OtherPatientIDsSequence", "ReferencedStudySequence"):
            ds[keyword].is_undefined_length = True
        ds.ReferencedStudySequence[0].ReferencedSeriesSequence.is_undefined_length = True
    return ds


def _header(ds: Dataset, tmp: Path) -> bytes:
    p = tmp / "x.dcm"
    ds.save_as(p, enforce_file_format=True)
    return header_bytes(p, None)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("undefined", [False, True])
def test_strip_phi_blanks_every_listed_value_and_keeps_the_structure(
    ts: str, undefined: bool, tmp_path: Path
) -> None:
    ds = _dataset(ts, undefined)
    raw = _header(ds, tmp_path)
    for value in PHI_VALUES:
        assert value in raw
    out = strip_phi(raw)
    assert len(out) == len(raw)  # same lengths everywhere: the structure is kept byte for byte
    for value in PHI_VALUES:
        assert value not in out, value
    back = pydicom.dcmread(io.BytesIO(out))
    # what is needed to find and diagnose the instance is kept
    assert back.file_meta.TransferSyntaxUID == ts
    assert (back.SOPClassUID, back.SOPInstanceUID) == (CT, ds.SOPInstanceUID)
    assert (back.StudyInstanceUID, back.SeriesInstanceUID) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert back.Modality == "CT" and back.Rows == 4
    ref = back.ReferencedStudySequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID
    assert ref.ReferencedSeriesSequence[0].ReferencedSOPInstanceUID == (
        ds.ReferencedStudySequence[0].ReferencedSeriesSequence[0].ReferencedSOPInstanceUID)
    assert str(back.PatientName).strip() == "" and str(back.PatientID).strip() == ""
    assert back[0x0011, 0x0010].value == "ACME PRIVATE"  # private creators are kept, private data blanked


def test_strip_phi_list_is_deliberate() -> None:
    from pydicom.datadict import tag_for_keyword

    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientIDsSequence",
                    "PatientAddress", "AccessionNumber", "ReferringPhysicianName", "InstitutionName"):
        assert tag_for_keyword(keyword) in PHI_TAGS, keyword
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                    "TransferSyntaxUID", "Rows", "Columns", "BitsAllocated"):
        assert tag_for_keyword(keyword) not in PHI_TAGS, keyword


def test_strip_phi_cuts_what_cannot_be_walked(tmp_path: Path) -> None:
    raw = _header(_dataset(ExplicitVRLittleEndian), tmp_path)
    at = raw.index(b"Saint Elsewhere")
    cut = strip_phi(raw[: at + 5])  # the header stops inside the institution's value
    assert b"Saint" not in cut and b"Doe^Jane" not in cut
    assert len(cut) < at
    # a length that runs past the end hides what follows it
    garbled = bytearray(raw)
    name_at = raw.index(b"Doe^Jane")
    garbled[name_at - 2: name_at] = b"\xff\x7f"  # PatientName's length, now 32767
    out = strip_phi(bytes(garbled))
    assert b"Doe^Jane" not in out and b"PID-4711" not in out and len(out) < name_at
    # not DICOM Part 10 at all: nothing is known not to be PHI
    assert strip_phi(b"\x00\x01not dicom at all" * 10) == b""
    assert strip_phi(b"") == b""


def test_strip_phi_keeps_only_the_file_meta_of_a_deflated_data_set() -> None:
    raw = header_bytes(Path(get_testdata_file("image_dfl.dcm")), None)
    out = strip_phi(raw)
    meta = pydicom.dcmread(io.BytesIO(out)).file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert len(out) < len(raw) and raw.startswith(out)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "rtplan.dcm", "JPEG2000.dcm", "test-SR.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_strip_phi_on_real_headers(name: str) -> None:
    path = Path(get_testdata_file(name))
    raw = header_bytes(path, None)
    original = pydicom.dcmread(io.BytesIO(raw), force=True)
    out = strip_phi(raw)
    back = pydicom.dcmread(io.BytesIO(out), force=True)
    assert back.get("SOPInstanceUID") == original.get("SOPInstanceUID")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName"):
        value = original.get(keyword)
        if value is not None and str(value).strip():
            assert str(back.get(keyword, "")).strip() == "", f"{name}: {keyword}"
            if str(value) not in str(original.get("Manufacturer")):  # kept: the device's maker, not the patient
                assert str(value).encode() not in out[132:], f"{name}: {keyword}"


def test_scp_defaults_are_for_a_hospital_network() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    d = s.dicom
    assert d.bind_address == "127.0.0.1"
    assert 0 < d.max_associations_per_peer <= d.max_associations
    assert 0 < d.max_instance_bytes < d.max_association_bytes
    assert 0 < d.idle_timeout_s <= 300 and 0 < d.acse_timeout_s <= 60
    assert s.ingest.deadletter_keep_phi is False
    assert 0 < s.kafka.deadletter_retention_ms < s.kafka.retention_ms
    for name in ("bind_address", "max_associations_per_peer", "max_instance_bytes", "max_association_bytes",
                 "idle_timeout_s", "allowed_calling_ae_titles", "allowed_peers"):
        assert type(d).model_fields[name].description, name


def test_certificate_mapping_needs_mutual_tls(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="client_ae_titles"):
        IngestTlsSettings(client_ae_titles={"ct-1": ["CT1"]})
    with pytest.raises(ValidationError, match="client_ae_titles"):
        IngestTlsSettings(cert_file=tmp_path / "c", client_ae_titles={"ct-1": ["CT1"]})
    ok = IngestTlsSettings(cert_file=tmp_path / "c", ca_file=tmp_path / "ca", client_ae_titles={"ct-1": ["CT1"]})
    assert ok.client_ae_titles == {"ct-1": ["CT1"]}


def test_config_command_shows_the_scp_allow_lists_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from radstream.cli.main import app

    monkeypatch.setenv("RADSTREAM_DICOM__ALLOWED_CALLING_AE_TITLES", '["CT-1", "MR-2"]')
    monkeypatch.setenv("RADSTREAM_DICOM__ALLOWED_PEERS", '["10.20.0.0/16"]')
    monkeypatch.setenv("RADSTREAM_DICOM__MAX_ASSOCIATIONS_PER_PEER", "3")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    dicom = shown["dicom"]
    assert dicom["allowed_calling_ae_titles"] == ["CT-1", "MR-2"]
    assert dicom["allowed_peers"] == ["10.20.0.0/16"]
    assert dicom["max_associations_per_peer"] == 3
    assert dicom["bind_address"] == "127.0.0.1"
    for key in ("max_instance_bytes", "max_association_bytes", "idle_timeout_s"):
        assert key in dicom
    assert shown["ingest"]["tls"]["client_ae_titles"] == {}
    assert shown["ingest"]["deadletter_keep_phi"] is False
    assert shown["kafka"]["deadletter_retention_ms"] == 7 * 24 * 3600 * 1000


def test_deadletter_topic_retention_is_its_own_setting() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    specs = {t.name: t for t in topic_specs(s)}
    assert specs["radstream.deadletter"].config["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert specs["radstream.instances"].config["retention.ms"] == str(30 * 24 * 3600 * 1000)
    assert "7 days" in specs["radstream.deadletter"].purpose
    custom = s.model_copy(update={"kafka": s.kafka.model_copy(update={"deadletter_retention_ms": 3_600_000})})
    assert {t.name: t for t in topic_specs(custom)}["radstream.deadletter"].config["retention.ms"] == "3600000"
    forever = s.model_copy(update={"kafka": s.kafka.model_copy(update={"deadletter_retention_ms": -1})})
    assert "forever" in {t.name: t for t in topic_specs(forever)}["radstream.deadletter"].purpose


def test_association_budget_limits() -> None:
    b = AssociationBudget(instance_limit=100, association_limit=250)
    assert not b.over(100) and b.over(101)
    b.used = 200
    assert not b.over(50) and b.over(51)
    unlimited = AssociationBudget(0, 0)
    assert not unlimited.over(1 << 40)
