"""Unit tests of the ingest building blocks: structure check, header validation, store, outbox."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import read_file_meta_info
from radstream.producers.header import CANNOT_UNDERSTAND, DOES_NOT_MATCH, Rejected, header_bytes, read_header, valid_uid
from radstream.producers.outbox import Outbox
from radstream.producers.scp import event_id_for
from radstream.producers.structure import MalformedDataset, check_layout, file_meta_end

from radstream.store import ContentStore, path_for_uri

pytestmark = pytest.mark.unit

SAMPLES = ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "image_dfl.dcm",
           "rtplan.dcm", "test-SR.dcm", "MR_small_implicit.dcm"]


def _layout(path: Path, size: int | None = None):  # type: ignore[no-untyped-def]
    ts = str(read_file_meta_info(path).TransferSyntaxUID)
    with open(path, "rb") as fh:
        return check_layout(fh, file_meta_end(fh), size if size is not None else path.stat().st_size, ts)


@pytest.mark.parametrize("name", SAMPLES)
def test_complete_files_pass_the_structure_check(name: str) -> None:
    layout = _layout(Path(get_testdata_file(name)))
    assert layout.end == Path(get_testdata_file(name)).stat().st_size


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("cut", [1, 7, 100, 1000])
def test_truncated_files_fail_the_structure_check(name: str, cut: int, tmp_path: Path) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    if cut >= len(data) - 400:
        pytest.skip("file too small for this cut")
    if name == "image_dfl.dcm" and cut <= 8:
        pytest.skip("this file has 8 bytes of junk after its (complete) deflate stream")
    p = tmp_path / "t.dcm"
    p.write_bytes(data[:-cut])
    with pytest.raises(MalformedDataset):
        _layout(p)


def test_zero_length_dataset_is_malformed(tmp_path: Path) -> None:
    src = Path(get_testdata_file("CT_small.dcm"))
    with open(src, "rb") as fh:
        end = file_meta_end(fh)
    p = tmp_path / "empty.dcm"
    p.write_bytes(src.read_bytes()[:end])
    with pytest.raises(MalformedDataset, match="zero-length"):
        _layout(p)


def test_pixel_data_offset_found_and_dead_letter_payload_stops_before_it() -> None:
    p = Path(get_testdata_file("CT_small.dcm"))
    layout = _layout(p)
    assert layout.pixel_data_offset is not None
    payload = header_bytes(p, layout.pixel_data_offset)
    assert len(payload) == layout.pixel_data_offset
    assert b"\xe0\x7f\x10\x00" not in payload[132:]


def test_uid_validation() -> None:
    assert valid_uid("1.2.840.10008.5.1.4.1.1.2")
    for bad in ["../../x", "", "1.2.", ".1", "1..2", "1.2.a", "1" * 65, "1.2/3"]:
        assert not valid_uid(bad), bad


def _with(tmp_path: Path, **changes: str) -> tuple[Path, pydicom.Dataset]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k, v in changes.items():
        setattr(ds, k, v)
    p = tmp_path / "x.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p, ds


def test_read_header_accepts_a_good_instance(tmp_path: Path) -> None:
    p, ds = _with(tmp_path)
    h = read_header(p, ds.SOPClassUID, ds.SOPInstanceUID, p.stat().st_size)
    assert h.study_instance_uid == ds.StudyInstanceUID
    assert "PixelData" not in h.dataset


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"StudyInstanceUID": "../../x"}, DOES_NOT_MATCH),
        ({"SeriesInstanceUID": ""}, DOES_NOT_MATCH),
        ({"SOPInstanceUID": "1.2.3.4"}, DOES_NOT_MATCH),  # differs from the command
    ],
)
def test_read_header_refuses_bad_uids(tmp_path: Path, changes: dict[str, str], status: int) -> None:
    ds0 = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    p, _ = _with(tmp_path, **changes)
    with pytest.raises(Rejected) as err:
        read_header(p, ds0.SOPClassUID, ds0.SOPInstanceUID, p.stat().st_size)
    assert err.value.status == status


def test_read_header_refuses_invalid_command_uid(tmp_path: Path) -> None:
    p, ds = _with(tmp_path)
    with pytest.raises(Rejected) as err:
        read_header(p, ds.SOPClassUID, "../../x", p.stat().st_size)
    assert err.value.status == CANNOT_UNDERSTAND


def test_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    first = store.add_bytes(b"hello dicom")
    again = store.add_bytes(b"hello dicom")
    assert first.sha256 == hashlib.sha256(b"hello dicom").hexdigest()
    assert not first.existed and again.existed and again.path == first.path
    assert path_for_uri(first.uri, store.root).read_bytes() == b"hello dicom"
    assert list(store.incoming.iterdir()) == []
    with pytest.raises(ValueError):
        path_for_uri((tmp_path / "elsewhere").as_uri(), store.root)
    with pytest.raises(ValueError):
        store.path_for("../../x")


def test_outbox_keeps_order_across_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite3")
    for i in range(5):
        ob.append("t", f"k{i}".encode(), f"v{i}".encode(), "InstanceReceived")
    ob.close()
    ob = Outbox(tmp_path / "o.sqlite3")
    assert ob.depth == 5
    recs = ob.peek(3)
    assert [r.value for r in recs] == [b"v0", b"v1", b"v2"]
    ob.delete([r.seq for r in recs[:2]])
    assert ob.depth == 3
    assert [r.value for r in ob.peek(10)] == [b"v2", b"v3", b"v4"]


def test_event_id_is_deterministic() -> None:
    assert event_id_for("1.2.3", "ab" * 32) == event_id_for("1.2.3", "ab" * 32)
    assert event_id_for("1.2.3", "ab" * 32) != event_id_for("1.2.4", "ab" * 32)


def test_store_replaces_a_torn_object(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    sha = hashlib.sha256(b"full content").hexdigest()
    torn = store.path_for(sha)
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"full")  # as if a crash hit between link and fsync
    obj = store.add_bytes(b"full content")
    assert not obj.existed
    assert obj.path.read_bytes() == b"full content"
