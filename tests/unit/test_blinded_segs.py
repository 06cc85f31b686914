"""Human segmentations for the blinded study: header checks, the check against the source, Dice, order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from radstream.db.segmentations import reader_order, seg_hash
from radstream.dicom_seg import (
    SegRefused,
    SourceSlice,
    check_against_source,
    dice,
    inspect_seg,
    read_source_slice,
    seg_volume_ml,
)
from radstream.settings import Settings
from radstream.synth.generate import SynthConfig, load_truth, synthesize
from radstream.synth.human_seg import human_segmentation

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def liver(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], Path, Path]:
    root = tmp_path_factory.mktemp("liver")
    synthesize(root, SynthConfig(seed=11, brain_patients=0, liver_patients=1, hip_patients=0, timepoints=1,
                                 ct_shape=(12, 48, 48)))
    study = load_truth(root)["studies"][0]
    folder = (root / study["series"][0]["files"][0]).parent
    out = tmp_path_factory.mktemp("segs")
    expert = human_segmentation(folder, out / "expert.dcm", style="expert", reader="Expert^A")
    novice = human_segmentation(folder, out / "novice.dcm", style="novice", reader="Novice^B")
    return folder, study["truth"]["volumes_ml"], expert, novice


def _source(folder: Path) -> list[SourceSlice]:
    return [read_source_slice(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID), p)
            for p in sorted(folder.glob("*.dcm"))]


def test_expert_tool_matches_the_phantom_and_passes_the_source_check(liver: tuple[Path, dict[str, float], Path,
                                                                                    Path]) -> None:
    folder, truth, expert, novice = liver
    info = inspect_seg(expert)
    assert set(info.segments.values()) == {"liver right lobe", "liver left lobe", "hepatic vessels"}
    check_against_source(info, _source(folder))
    _total, per = seg_volume_ml(expert)
    for label, ml in truth.items():
        assert per[label] == pytest.approx(ml, rel=0.01)
    novice_info = inspect_seg(novice)
    assert "hepatic vessels" not in novice_info.segments.values()
    check_against_source(novice_info, _source(folder))


def test_header_refusals(liver: tuple[Path, dict[str, float], Path, Path], tmp_path: Path) -> None:
    folder, _truth, expert, _novice = liver
    with pytest.raises(SegRefused, match="not a readable DICOM"):
        (tmp_path / "junk.dcm").write_bytes(b"\x00" * 300)
        inspect_seg(tmp_path / "junk.dcm")
    with pytest.raises(SegRefused, match="not a DICOM Segmentation"):
        inspect_seg(next(folder.glob("*.dcm")))
    with pytest.raises(SegRefused, match="over the limit"):
        inspect_seg(expert, max_decoded_bytes=1000)
    ds = pydicom.dcmread(expert)
    ds.SOPInstanceUID = "1.2.3.x"
    ds.save_as(tmp_path / "bad-uid.dcm")
    with pytest.raises(SegRefused, match="SOP Instance UID"):
        inspect_seg(tmp_path / "bad-uid.dcm")
    ds = pydicom.dcmread(expert)
    del ds.ReferencedSeriesSequence
    ds.save_as(tmp_path / "no-ref.dcm")
    with pytest.raises(SegRefused, match="names no source series"):
        inspect_seg(tmp_path / "no-ref.dcm")


def test_source_check_refusals(liver: tuple[Path, dict[str, float], Path, Path], tmp_path: Path) -> None:
    folder, _truth, expert, _novice = liver
    source = _source(folder)
    info = inspect_seg(expert)
    other = [SourceSlice(s.sop_instance_uid, generate_uid(), s.rows, s.columns, s.position) for s in source]
    with pytest.raises(SegRefused, match="another study"):
        check_against_source(info, other)
    small = [SourceSlice(s.sop_instance_uid, s.study_instance_uid, 24, 24, s.position) for s in source]
    with pytest.raises(SegRefused, match="source images are 24x24"):
        check_against_source(info, small)
    with pytest.raises(SegRefused, match="not in the source series"):
        check_against_source(info, [s for s in source if s.sop_instance_uid != info.frame_sources[0]])
    ds = pydicom.dcmread(expert)
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    del frame.DerivationImageSequence
    frame.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 999.0]
    ds.save_as(tmp_path / "off-grid.dcm")
    with pytest.raises(SegRefused, match="frame 1 lies on no slice"):
        check_against_source(inspect_seg(tmp_path / "off-grid.dcm"), source)
    with pytest.raises(SegRefused, match="no instances"):
        check_against_source(info, [])


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) is None
    a[:2] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def test_hashes_and_reader_order_are_salted_and_per_reader(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, site_secret="x" * 40, inference={"blinding_salt": "salt-one-" + "y" * 32})  # type: ignore[arg-type]
    t = Settings(home=tmp_path, site_secret="x" * 40, inference={"blinding_salt": "salt-two-" + "y" * 32})  # type: ignore[arg-type]
    assert seg_hash(s, "1.2.3") != seg_hash(t, "1.2.3") and len(seg_hash(s, "1.2.3")) == 16
    hashes = [f"h{i}" for i in range(3)]
    orders = {tuple(reader_order(s, r, f"case{c}", hashes)) for r in ("r1", "r2", "r3") for c in range(10)}
    assert len(orders) > 1  # not one order for everyone
    assert all(sorted(o) == sorted(hashes) for o in orders)
    assert reader_order(s, "r1", "case1", hashes) == reader_order(s, "r1", "case1", list(reversed(hashes)))
