"""``radstream synth --from-nifti``: a NIfTI volume as a DICOM MR series.

Colin27 (Debian ``mricron-data``, installed by scripts/bootstrap.sh) and a small oblique float volume
are converted; dcmtk's ``dciodvfy`` must find no error in the instances, and the series read back by
the worker's series loader must put every voxel where SimpleITK puts it in the NIfTI (same
direction, origin and spacing after the axial reorientation, same values through the rescale)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from radstream.consumers.operators.series_loader import build_volume

from radstream.synth.nifti import nifti_to_dicom

pytestmark = pytest.mark.unit

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dcmtk/dicom3tools) is not installed: run scripts/bootstrap.sh"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    assert any("MRImage" in ln for ln in lines), lines  # dciodvfy recognised the IOD it checked
    return [ln for ln in lines if ln.startswith("Error")]


def loaded_as_sitk(files: list[Path]) -> tuple[Any, sitk.Image]:
    vol = build_volume([pydicom.dcmread(f) for f in files])
    img = sitk.GetImageFromArray(vol.array)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return vol, img


def assert_same_voxels(nifti: sitk.Image, loaded: sitk.Image, atol: float) -> None:
    """Each of a sample of NIfTI voxels, found by its physical point in the loaded series, has its value."""
    rng = np.random.default_rng(0)
    size = np.array(nifti.GetSize())
    arr_n, arr_l = sitk.GetArrayViewFromImage(nifti), sitk.GetArrayViewFromImage(loaded)
    corners = [np.zeros(3, int), size - 1]
    for idx in corners + [rng.integers(0, size) for _ in range(300)]:
        point = nifti.TransformIndexToPhysicalPoint([int(v) for v in idx])
        j = loaded.TransformPhysicalPointToIndex(point)
        assert all(0 <= j[a] < loaded.GetSize()[a] for a in range(3)), (idx, point, j)
        assert np.allclose(loaded.TransformIndexToPhysicalPoint(j), point, atol=1e-4)
        assert abs(float(arr_l[j[2], j[1], j[0]]) - float(arr_n[idx[2], idx[1], idx[0]])) <= atol


def test_colin27_as_dicom_series(tmp_path: Path) -> None:
    assert COLIN27.exists(), "Debian mricron-data is not installed: run scripts/bootstrap.sh"
    series = nifti_to_dicom(COLIN27, tmp_path / "dcm", patient_id="COLIN27")
    assert len(series.files) == 181 and series.rescale == (1.0, 0.0)
    for f in (series.files[0], series.files[90], series.files[-1]):
        assert dciodvfy_errors(f) == [], f
    ds = pydicom.dcmread(series.files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]  # axial, rows to L, cols to P
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian

    nifti = sitk.ReadImage(str(COLIN27))  # RAS on disk; SimpleITK gives LPS, direction diag(-1, -1, 1)
    assert np.allclose(nifti.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    vol, loaded = loaded_as_sitk(series.files)
    expected = sitk.DICOMOrient(nifti, "LPS")
    assert np.allclose(vol.direction, expected.GetDirection())
    assert np.allclose(vol.origin, expected.GetOrigin(), atol=1e-6)
    assert np.allclose(vol.spacing, expected.GetSpacing(), atol=1e-6)
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(expected).astype(np.float32))
    assert_same_voxels(nifti, loaded, atol=0.0)


def test_oblique_float_volume_round_trip(tmp_path: Path) -> None:
    """Sagittal-stored, anisotropic, float voxels: reoriented to axial and stored with a rescale."""
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(12, 20, 16)) * 100.5 + 7.25).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 1.2, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # i -> y, j -> z, k -> x: a sagittal acquisition
    sitk.WriteImage(img, str(tmp_path / "vol.nii.gz"))
    series = nifti_to_dicom(tmp_path / "vol.nii.gz", tmp_path / "dcm")
    slope, _intercept = series.rescale
    assert slope != 1.0
    assert dciodvfy_errors(series.files[3]) == []  # a rescale in MR is a warning (Standard Extended)
    nifti = sitk.ReadImage(str(tmp_path / "vol.nii.gz"))
    vol, loaded = loaded_as_sitk(series.files)
    assert vol.array.shape == (20, 16, 12)  # slices along z (was j), rows along y (was i), columns along x (was k)
    assert np.allclose(vol.direction, np.eye(3).ravel())
    assert np.allclose(vol.spacing, sitk.DICOMOrient(nifti, "LPS").GetSpacing(), atol=1e-6)
    assert_same_voxels(nifti, loaded, atol=slope / 2 + 1e-3)
