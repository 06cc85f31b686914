"""DICOM building blocks for synthetic studies: identity, modules, deterministic UIDs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
ISSUER = "RADSTREAM-SYNTH"
BASE_DATE = date(2024, 1, 15)


def uid(*parts: object) -> str:
    """A deterministic UID (2.25 form) from the given parts."""
    # pydicom's generate_uid(prefix=None) ignores entropy_srcs (it returns a random UUID UID),
    # so derive the 2.25 UID from a hash of the parts: same seed, same UIDs.
    digest = hashlib.sha256("\x00".join(["radstream-synth", *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class Identity:
    """Who and which study: shared by every instance of one study."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    frame_of_reference_uid: str
    referring: str = "SYNTHETIC^REFERRER"
    issuer: str = ISSUER


def study_date(timepoint: int, interval_days: int) -> str:
    return (BASE_DATE + timedelta(days=timepoint * interval_days)).strftime("%Y%m%d")


def base_dataset(ident: Identity, sop_class: str, sop_uid: str, series_uid: str, modality: str,
                 series_number: int, series_description: str, instance_number: int, body_part: str) -> Dataset:
    """Patient, General Study, Patient Study, General Series, General Equipment, General Image, SOP Common."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADSTREAM_SYN"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = ident.study_date
    ds.InstanceCreationTime = ident.study_time
    # Patient
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.IssuerOfPatientID = ident.issuer
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.PatientIdentityRemoved = "NO"
    # General Study
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyDate = ident.study_date
    ds.StudyTime = ident.study_time
    ds.ReferringPhysicianName = ident.referring
    ds.StudyID = ident.accession[-8:]
    ds.AccessionNumber = ident.accession
    ds.StudyDescription = ident.study_description
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = ident.study_date
    ds.SeriesTime = ident.study_time
    ds.BodyPartExamined = body_part
    # General Equipment
    ds.Manufacturer = "radstream synthetic phantom"
    ds.InstitutionName = "Synthetic Hospital"
    ds.StationName = f"SYN{modality}01"
    ds.ManufacturerModelName = "radstream-synth"
    ds.SoftwareVersions = "1"
    # General Image
    ds.InstanceNumber = instance_number
    ds.ContentDate = ident.study_date
    ds.ContentTime = ident.study_time
    ds.AcquisitionDate = ident.study_date
    ds.AcquisitionTime = ident.study_time
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = "SYNTHETIC PHANTOM - not a patient image"
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray[Any, Any], bits_stored: int, signed: bool = False) -> None:
    """Image Pixel module for a MONOCHROME2 16-bit frame."""
    arr = pixels.astype(np.int16 if signed else np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()


def set_plane(ds: Dataset, position: tuple[float, float, float], spacing_rc: tuple[float, float],
              thickness: float, frame_of_reference: str) -> None:
    """Frame of Reference and Image Plane modules for an axial slice."""
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.PixelSpacing = [float(spacing_rc[0]), float(spacing_rc[1])]
    ds.SliceThickness = float(thickness)
    ds.SliceLocation = round(float(position[2]), 4)


def empty_sequence() -> Sequence:
    return Sequence([])


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
