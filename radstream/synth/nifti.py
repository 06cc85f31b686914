"""A NIfTI volume as a DICOM MR Image Storage series (``radstream synth --from-nifti PATH``).

Real research images (e.g. Colin27 from Debian's ``mricron-data``) come in through the front door
like any exam: this writes one classic single-frame MR instance per slice, Explicit VR Little Endian,
with the geometry of the NIfTI as SimpleITK reads it (SimpleITK turns NIfTI's RAS+ world into DICOM's
LPS+ patient space). The volume is first reoriented so that the slices are axial and the image rows
and columns run to the patient's left and posterior (``ImageOrientationPatient`` 1\\0\\0\\0\\1\\0, the
display convention), which keeps every voxel at its physical point. Integer voxels that fit 16 bits
are stored as they are; anything else is stored as int16 with ``RescaleSlope``/``RescaleIntercept``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.valuerep import format_number_as_ds

from radstream.synth import dicom as d

SECONDARY_NOTE = "converted from NIfTI by radstream synth --from-nifti"


@dataclass(frozen=True)
class NiftiSeries:
    files: list[Path]
    study_uid: str
    series_uid: str
    shape: tuple[int, int, int]  # slices, rows, columns
    spacing: tuple[float, float, float]  # x, y, z mm (SimpleITK order)
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    rescale: tuple[float, float]  # slope, intercept


def _ds(value: float) -> str:
    """A decimal string within the DS VR's 16 characters."""
    return str(format_number_as_ds(float(value)))


def _pixels(array: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], bool, float, float]:
    """Stored values, signedness, slope, intercept."""
    lo, hi = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.equal(np.mod(array, 1), 0)))
    if integral and lo >= 0 and hi <= 65535:
        return array.astype(np.uint16), False, 1.0, 0.0
    if integral and lo >= -32768 and hi <= 32767:
        return array.astype(np.int16), True, 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    intercept = lo + 32768.0 * slope
    stored = np.rint((array.astype(np.float64) - intercept) / slope).clip(-32768, 32767).astype(np.int16)
    return stored, True, slope, intercept


def read_nifti(path: Path) -> Any:
    """The NIfTI as SimpleITK reads it (LPS), reoriented to axial slices with L/P/S axes."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        img = sitk.Extract(img, [*size[:3], 0], [0, 0, 0, 0])
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: a scalar 3-D volume is needed")
    return sitk.DICOMOrient(img, "LPS")


def nifti_to_dicom(path: Path, out: Path, *, patient_id: str = "NIFTI-0001", patient_name: str = "NIFTI^VOLUME",
                   series_description: str = "T1 3D (NIfTI)", study_description: str = "MR BRAIN",
                   body_part: str = "BRAIN", seed: str | None = None, study_uid: str | None = None,
                   ) -> NiftiSeries:
    """Write ``out/00001.dcm``... one MR instance per axial slice; returns what was written."""
    import SimpleITK as sitk

    img = read_nifti(path)
    array = sitk.GetArrayFromImage(img)  # slices, rows, columns
    stored, signed, slope, intercept = _pixels(array)
    sx, sy, sz = (float(v) for v in img.GetSpacing())
    spacing = (sx, sy, sz)
    origin = np.array(img.GetOrigin(), dtype=float)
    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    key = seed or Path(path).name
    ident = d.Identity(
        patient_id=patient_id, patient_name=patient_name, birth_date="", sex="O",
        study_uid=study_uid or d.uid("nifti", key, "study"), study_date=d.BASE_DATE.strftime("%Y%m%d"),
        study_time="120000", accession=f"N{int(d.uid('nifti', key, 'acc')[5:]) % 10**8:08d}",
        study_description=study_description, frame_of_reference_uid=d.uid("nifti", key, "for"),
        referring="", issuer="RADSTREAM-NIFTI",
    )
    series_uid = d.uid(ident.study_uid, "nifti-series")
    row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    bits = 16
    window_lo, window_hi = float(np.percentile(array, 1)), float(np.percentile(array, 99.5))
    files = []
    for k in range(array.shape[0]):
        sop_uid = d.uid(series_uid, k)
        ds = d.base_dataset(ident, d.MR_IMAGE_STORAGE, sop_uid, series_uid, "MR", 1, series_description, k + 1,
                            body_part)
        ds.Manufacturer = "radstream"
        ds.InstitutionName = ""
        ds.ManufacturerModelName = "radstream synth --from-nifti"
        ds.ImageComments = f"{SECONDARY_NOTE}: {Path(path).name}"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.ScanningSequence = "RM"  # research mode: the acquisition is not known from a NIfTI
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = None
        ds.EchoTrainLength = None
        ds.RepetitionTime = None
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        pos = origin + k * spacing[2] * normal
        ds.FrameOfReferenceUID = ident.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(np.dot(pos, normal))
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (y), column spacing (x)
        d.set_pixels(ds, stored[k], bits, signed=signed)
        if (slope, intercept) != (1.0, 0.0):
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        ds.WindowCenter = _ds((window_lo + window_hi) / 2)
        ds.WindowWidth = _ds(max(window_hi - window_lo, 1.0))
        files.append(d.write(ds, out / f"{k + 1:05d}.dcm"))
    return NiftiSeries(files, ident.study_uid, series_uid, (int(array.shape[0]), int(array.shape[1]),
                       int(array.shape[2])), spacing, (float(origin[0]), float(origin[1]), float(origin[2])),
                       tuple(float(v) for v in direction.ravel()), (slope, intercept))


def nifti_mask_to_seg(mask: Path, series: NiftiSeries, out: Path, *, label: str = "brain",
                      algorithm: str = "BET", algorithm_version: str = "FSL") -> Path:
    """Write a NIfTI mask (non-zero = ``label``) of the volume ``series`` was converted from as a DICOM SEG
    on that series (e.g. Colin27's ``ch2bet.nii.gz``, FSL BET's brain mask, as a reference segmentation
    to send by C-STORE from a reference source's AE title). The mask must share the volume's grid."""
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from radstream import __version__
    from radstream.consumers.operators.dicom_out import SEGMENT_CODES, TISSUE

    img = read_nifti(mask)
    labels = sitk.GetArrayFromImage(img) != 0  # slices, rows, columns, in the series' order
    if tuple(int(v) for v in labels.shape) != series.shape or not np.allclose(img.GetOrigin(), series.origin,
                                                                              atol=1e-3) \
            or not np.allclose(img.GetSpacing(), series.spacing, atol=1e-4) \
            or not np.allclose(img.GetDirection(), series.direction, atol=1e-4):
        raise ValueError(f"{mask}: not on the grid of series {series.series_uid} ({labels.shape} vs {series.shape})")
    datasets = [pydicom.dcmread(p) for p in series.files]
    category, typ = SEGMENT_CODES.get(label, (TISSUE, TISSUE))
    # BET (which made ch2bet) fits a deformable surface model
    algo = hd.AlgorithmIdentificationSequence(name=algorithm[:64], family=codes.cid7162.DeformableModels,
                                              version=algorithm_version)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=category, segmented_property_type=typ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=900, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="radstream", manufacturer_model_name="radstream synth --reference-mask",
        software_versions=__version__, device_serial_number="0",
        series_description=f"REFERENCE SEG {Path(mask).name}"[:64], content_label="REFERENCE",
        content_description=f"{label} mask from {Path(mask).name}"[:64])
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
