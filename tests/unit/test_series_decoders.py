"""The series loader on real encoded images (pydicom's and pydicom-data's test files).

Every compressed transfer syntax radstream accepts decodes to what the uncompressed original (or
dcmtk's own decoder, ``dcmdjpeg``, as an independent reference) holds; Enhanced multi-frame MR/CT
are stacked from their functional groups; what cannot be decoded is an OperatorError that names the
instance, the transfer syntax and the decoder's reason (the worker turns it into InferenceFailed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from radstream.consumers.operators.base import OperatorError
from radstream.consumers.operators.series_loader import build_volume, decode_pixels

pytestmark = pytest.mark.unit


def data_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"{name} is not installed (pydicom-data, a dev dependency: scripts/bootstrap.sh)"
    return Path(str(path))


def read(name: str) -> Dataset:
    return pydicom.dcmread(data_file(name))


def dcmtk_decoded(src: Path, tmp_path: Path, tool: str = "dcmdjpeg") -> np.ndarray:
    exe = shutil.which(tool)
    assert exe, f"{tool} (dcmtk) is not installed"
    out = tmp_path / f"{src.stem}.{tool}.dcm"
    subprocess.run([exe, str(src), str(out)], check=True, capture_output=True)
    ds = pydicom.dcmread(out)
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    return np.asarray(ds.pixel_array)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_single_frame_mr_equals_the_original(name: str) -> None:
    ds = read(name)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(decode_pixels(ds), read("MR_small.dcm").pixel_array)
    vol = build_volume([ds])
    assert vol.array.shape == (1, 64, 64)


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm"])
def test_lossless_enhanced_mr_frames_equal_the_original(name: str) -> None:
    ds = read(name)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1" and int(ds.NumberOfFrames) == 10  # Enhanced MR
    decoded = decode_pixels(ds)
    assert decoded.shape == (10, 64, 64)
    assert np.array_equal(decoded, read("emri_small.dcm").pixel_array)


@pytest.mark.parametrize(("name", "atol"), [
    ("JPEG-LL.dcm", 0),  # JPEG lossless, process 14 SV1, 16-bit (GDCM)
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", 0),  # JPEG lossless, 8-bit
])
def test_jpeg_lossless_and_extended_equal_dcmtk(name: str, atol: int, tmp_path: Path) -> None:
    ds = read(name)
    reference = dcmtk_decoded(data_file(name), tmp_path)
    got = decode_pixels(ds).astype(np.int64)
    assert got.shape == reference.shape
    assert int(np.abs(got - reference.astype(np.int64)).max()) <= atol


def test_jpeg_baseline_greyscale_equals_dcmtk(tmp_path: Path) -> None:
    """An 8-bit greyscale JPEG baseline image made here by dcmtk (dcmcjpeg +eb), decoded by both."""
    plain = tmp_path / "plain.dcm"
    subprocess.run(["dcmdjpeg", str(data_file("JPGLosslessP14SV1_1s_1f_8b.dcm")), str(plain)], check=True)
    baseline = tmp_path / "baseline.dcm"
    subprocess.run(["dcmcjpeg", "+eb", str(plain), str(baseline)], check=True, capture_output=True)
    ds = pydicom.dcmread(baseline)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    got = decode_pixels(ds).astype(np.int64)
    reference = dcmtk_decoded(baseline, tmp_path).astype(np.int64)
    assert int(np.abs(got - reference).max()) <= 1
    original = pydicom.dcmread(plain).pixel_array.astype(np.int64)
    assert float(np.abs(got - original).mean()) < 3.0  # lossy, but the same image


def test_enhanced_ct_stacked_from_functional_groups() -> None:
    ds = read("eCT_Supplemental.dcm")
    vol = build_volume([ds])
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0]
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float) for f in per_frame]
    assert vol.array.shape == (2, int(ds.Rows), int(ds.Columns))
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    assert np.allclose(vol.origin, min(positions, key=lambda p: float(np.dot(normal, p))))
    assert np.isclose(vol.spacing[2], abs(positions[1][2] - positions[0][2]))
    ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert np.allclose(vol.spacing[:2], (ps[1], ps[0]))
    pvt = shared.PixelValueTransformationSequence[0]
    raw = ds.pixel_array.astype(np.float32)
    expected = raw * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
    order = np.argsort([float(np.dot(normal, p)) for p in positions])
    assert np.array_equal(vol.array, expected[order])
    assert vol.datasets == [ds]


def test_undecodable_pixel_data_is_an_operator_error() -> None:
    ds = read("MR_small_jp2klossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:60]])  # a truncated JPEG 2000 codestream
    with pytest.raises(OperatorError, match=r"cannot be decoded") as info:
        decode_pixels(ds)
    assert "JPEG 2000" in str(info.value) and str(ds.SOPInstanceUID) in str(info.value)
    assert "failed to read the header" in str(info.value)  # the decoder's own reason is kept
    with pytest.raises(OperatorError, match="no pixel data"):  # the file ends inside its pixel data
        decode_pixels(read("emri_small_jpeg_2k_lossless_too_short.dcm"))


def test_jpeg_extended_12_bit_is_refused_with_the_reason() -> None:
    """No MIT/Apache decoder here does 12-bit JPEG extended (pylibjpeg-libjpeg, GPL-3.0, would)."""
    with pytest.raises(OperatorError, match=r"JPEG Extended.*cannot be decoded.*12-bit"):
        decode_pixels(read("JPGExtended.dcm"))


def test_unknown_transfer_syntax_is_an_operator_error() -> None:
    ds = read("MR_small_RLE.dcm")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder
    with pytest.raises(OperatorError, match=r"MPEG2.*cannot be decoded"):
        decode_pixels(ds)


def test_frames_without_geometry_and_colour_are_refused_clearly() -> None:
    with pytest.raises(OperatorError, match="no functional groups"):
        build_volume([read("emri_small.dcm")])  # Enhanced MR stripped of its functional groups
    with pytest.raises(OperatorError, match="samples per pixel"):
        decode_pixels(read("SC_rgb_jpeg_dcmtk.dcm"))


def test_an_undecodable_series_fails_the_request_at_load_series(tmp_path: Path) -> None:
    """Through the worker's chain: a stage error with the reason (the worker's InferenceFailed), no crash."""
    from radstream.consumers.inference.chain import Chain, StageError

    from radstream.pipelines.operators_spec import load_inference_pipeline
    from radstream.settings import Settings
    from radstream.store import ContentStore
    from radstream.synth.requests import request_for_study

    ds = read("MR_small_jp2klossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:60]])
    files = []
    for k in range(8):  # eight slices (brain-tumour wants 8), 1 mm apart, all undecodable
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID.rsplit('.', 1)[0]}.{90 + k}"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        files.append(tmp_path / f"{k}.dcm")
        ds.save_as(files[-1])
    settings = Settings(home=tmp_path)
    spec = load_inference_pipeline("brain-tumour")
    study = {"patient_id": "P", "issuer": "I", "study_instance_uid": str(ds.StudyInstanceUID),
             "accession_number": "A", "series": [{"series_instance_uid": str(ds.SeriesInstanceUID),
                                                  "modality": "MR", "series_description": "FLAIR",
                                                  "files": [str(f) for f in files]}]}
    req = request_for_study(study, Path("/"), ContentStore(settings.store_root), b"secret", pipeline=spec.name,
                            model_name=spec.model.name)
    chain = Chain(settings, spec.model_copy(update={"operators": spec.operators[:1]}))  # load_series only
    with pytest.raises(StageError) as info:
        chain.run(req)
    assert info.value.stage == "load_series" and isinstance(info.value.error, OperatorError)
    assert "JPEG 2000" in str(info.value) and "cannot be decoded" in str(info.value)
