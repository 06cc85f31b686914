"""Synthetic DICOM series for ingest tests and load tests (random pixels, fake identifiers).

These are not the ground-truth studies of ``radstream synth``: they only need to be valid
storage instances of a given size (e.g. 0.5 MB MR slices, 33 kB CT slices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_series(
    folder: Path,
    count: int,
    *,
    modality: str = "CT",
    rows: int = 128,
    columns: int = 128,
    patient_id: str = "SYN-0001",
    seed: int = 0,
    study_uid: str | None = None,
) -> list[Path]:
    """Write ``count`` single-frame slices of one series (16-bit pixels: rows*columns*2 bytes each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study = study_uid or generate_uid()
    series = generate_uid()
    sop_class = UID(CT_IMAGE if modality == "CT" else MR_IMAGE)
    pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    paths: list[Path] = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientID = patient_id
        ds.PatientName = "SYNTHETIC^PATIENT"
        ds.Modality = modality
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.SeriesDescription = f"synthetic {modality}"
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.roll(pixels, i, axis=0).tobytes()
        path = folder / f"{modality}{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
