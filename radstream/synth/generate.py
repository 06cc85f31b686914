"""Write synthetic studies (DICOM files) and their ground truth (``ground_truth.json``).

Deterministic for a given seed and configuration: same UIDs, same pixels, same truth.
Layout: ``<out>/<kind>/<patient_id>/<study_date>/<series_number>/<instance:05d>.dcm``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from radstream.models.specs import REFERENCE_NOTE
from radstream.synth import dicom as d
from radstream.synth.phantoms import HIP_FINDINGS, Grid, abdomen, brain, pelvis_radiograph

GROUND_TRUTH_FILE = "ground_truth.json"
FORMAT_VERSION = 1


@dataclass
class SynthConfig:
    seed: int = 0
    brain_patients: int = 1
    liver_patients: int = 1
    hip_patients: int = 1
    timepoints: int = 3
    interval_days: int = 90
    mr_shape: tuple[int, int, int] = (32, 64, 64)  # slices, rows, columns
    mr_fov_mm: tuple[float, float] = (160.0, 240.0)  # z extent, in-plane FOV
    ct_shape: tuple[int, int, int] = (40, 64, 64)
    ct_fov_mm: tuple[float, float] = (200.0, 400.0)
    dx_size: tuple[int, int] = (256, 256)  # rows, columns (1600x1600 is about 5 MB per image)
    dx_images: int = 2
    dx_field_mm: float = 400.0

    @staticmethod
    def shape3(text: str) -> tuple[int, int, int]:
        """'64x64x32' (columns x rows x slices) -> (slices, rows, columns)."""
        c, r, s = (int(v) for v in text.lower().split("x"))
        return (s, r, c)


@dataclass
class SeriesTruth:
    series_instance_uid: str
    modality: str
    series_description: str
    series_number: int
    files: list[str]
    sop_instance_uids: list[str]
    sop_class_uid: str


@dataclass
class StudyTruth:
    kind: str  # brain_mr | liver_ct | pelvis_dx
    patient_id: str
    issuer: str
    study_instance_uid: str
    accession_number: str
    study_date: str
    timepoint: int
    series: list[SeriesTruth]
    truth: dict[str, Any] = field(default_factory=dict)


def _identity(kind: str, n: int, tp: int, cfg: SynthConfig, description: str, sex: str) -> d.Identity:
    pid = f"SYN-{kind[:2].upper()}-{cfg.seed:03d}-{n:04d}"
    sd = d.study_date(tp, cfg.interval_days)
    return d.Identity(
        patient_id=pid, patient_name=f"SYNTHETIC^{kind.upper()}{n:04d}", birth_date="19600101", sex=sex,
        study_uid=d.uid(cfg.seed, kind, n, tp, "study"), study_date=sd, study_time="093000",
        accession=f"A{cfg.seed:03d}{'BLH'['blp'.index(kind[0])]}{n:04d}{tp:02d}",
        study_description=description,
        frame_of_reference_uid=d.uid(cfg.seed, kind, n, tp, "for"),
    )


def _volume_series(out: Path, ident: d.Identity, grid: Grid, image: np.ndarray[Any, Any], *, kind: str, sop_class: str,
                   modality: str, description: str, series_number: int, body_part: str,
                   extra: dict[str, Any], ct: bool) -> SeriesTruth:
    series_uid = d.uid(ident.study_uid, series_number, "series")
    files, uids = [], []
    ox, oy, oz = grid.origin
    for k in range(grid.shape[0]):
        sop_uid = d.uid(series_uid, k)
        ds = d.base_dataset(ident, sop_class, sop_uid, series_uid, modality, series_number, description, k + 1,
                            body_part)
        d.set_plane(ds, (ox, oy, oz + k * grid.spacing[0]), (grid.spacing[1], grid.spacing[2]), grid.spacing[0],
                    ident.frame_of_reference_uid)
        for key, value in extra.items():
            setattr(ds, key, value)
        if ct:
            d.set_pixels(ds, np.rint(image[k] + 1024.0).clip(0, 4095), 12)
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = 60, 400
        else:
            d.set_pixels(ds, np.rint(image[k]).clip(0, 4095), 12)
            ds.WindowCenter, ds.WindowWidth = 600, 1200
        ds.AcquisitionNumber = 1
        path = out / f"{k + 1:05d}.dcm"
        d.write(ds, path)
        files.append(str(path))
        uids.append(sop_uid)
    return SeriesTruth(series_uid, modality, description, series_number, files, uids, sop_class)


MR_EXTRA: dict[str, Any] = {
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"], "ScanningSequence": ["SE", "IR"],
    "SequenceVariant": ["SK", "OSP"], "ScanOptions": "", "MRAcquisitionType": "2D", "RepetitionTime": 9000.0,
    "EchoTime": 110.0, "InversionTime": 2500.0, "EchoTrainLength": 16, "MagneticFieldStrength": 3.0,
    "SequenceName": "*tir2d1_16", "ImagedNucleus": "1H", "ProtocolName": "AX T2 FLAIR",
}
CT_EXTRA: dict[str, Any] = {
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": 120, "ConvolutionKernel": "STANDARD",
    "ContrastBolusAgent": "IODINATED", "ProtocolName": "CT ABDOMEN PORTAL VENOUS",
}


def _brain_study(root: Path, cfg: SynthConfig, n: int, tp: int, rng: np.random.Generator,
                 base: dict[str, Any]) -> StudyTruth:
    nz, ny, nx = cfg.mr_shape
    grid = Grid(cfg.mr_shape, (cfg.mr_fov_mm[0] / nz, cfg.mr_fov_mm[1] / ny, cfg.mr_fov_mm[1] / nx))
    radii = tuple(float(r * base["growth"][tp]) for r in base["radii"])
    ph = brain(grid, rng, base["centre"], radii)  # type: ignore[arg-type]
    ident = _identity("brain", n, tp, cfg, "MR BRAIN WITH AND WITHOUT CONTRAST", "F")
    out = root / "brain_mr" / ident.patient_id / ident.study_date / "3"
    s = _volume_series(out, ident, grid, ph.image, kind="brain", sop_class=d.MR_IMAGE_STORAGE, modality="MR",
                       description="AX T2 FLAIR", series_number=3, body_part="BRAIN", extra=MR_EXTRA, ct=False)
    vol = {k: float(m.sum()) * grid.voxel_ml for k, m in ph.masks.items()}
    return StudyTruth("brain_mr", ident.patient_id, ident.issuer, ident.study_uid, ident.accession, ident.study_date,
                      tp, [s], {"volumes_ml": vol, "analytic_volumes_ml": ph.analytic_ml,
                                "voxel_ml": grid.voxel_ml})


def _liver_study(root: Path, cfg: SynthConfig, n: int, tp: int, rng: np.random.Generator,
                 base: dict[str, Any]) -> StudyTruth:
    nz, ny, nx = cfg.ct_shape
    grid = Grid(cfg.ct_shape, (cfg.ct_fov_mm[0] / nz, cfg.ct_fov_mm[1] / ny, cfg.ct_fov_mm[1] / nx))
    ph = abdomen(grid, rng, base["scale"][tp], base["split_x"])
    ident = _identity("liver", n, tp, cfg, "CT ABDOMEN WITH CONTRAST", "M")
    out = root / "liver_ct" / ident.patient_id / ident.study_date / "2"
    s = _volume_series(out, ident, grid, ph.image, kind="liver", sop_class=d.CT_IMAGE_STORAGE, modality="CT",
                       description="ABD PORTAL VENOUS 5MM", series_number=2, body_part="ABDOMEN", extra=CT_EXTRA,
                       ct=True)
    vol = {k: float(m.sum()) * grid.voxel_ml for k, m in ph.masks.items()}
    return StudyTruth("liver_ct", ident.patient_id, ident.issuer, ident.study_uid, ident.accession, ident.study_date,
                      tp, [s], {"volumes_ml": vol, "voxel_ml": grid.voxel_ml})


def _dx_dataset(ident: d.Identity, sop_uid: str, series_uid: str, k: int, pixels: np.ndarray[Any, Any],
                spacing: float) -> Dataset:
    ds = d.base_dataset(ident, d.DX_PRESENTATION_STORAGE, sop_uid, series_uid, "DX", 1, "PELVIS AP", k + 1, "PELVIS")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "B"
    ana = Dataset()
    ana.CodeValue, ana.CodingSchemeDesignator, ana.CodeMeaning = "12921003", "SCT", "Pelvis"
    ds.AnatomicRegionSequence = Sequence([ana])
    d.set_pixels(ds, pixels, 12)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.DetectorType = "DIRECT"
    ds.ViewPosition = "AP"
    ds.PatientPosition = ""
    ds.PositionerType = "COLUMN"
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "399348003", "SCT", "antero-posterior"
    ds.ViewCodeSequence = Sequence([view])
    ds.AcquisitionContextSequence = Sequence([])
    ds.KVP = 80
    ds.AcquisitionNumber = 1
    return ds


def _hip_study(root: Path, cfg: SynthConfig, n: int, tp: int, rng: np.random.Generator,
               base: dict[str, Any]) -> StudyTruth:
    findings: dict[str, str] = base["findings"][tp]
    ident = _identity("pelvis", n, tp, cfg, "XR PELVIS", "F")
    series_uid = d.uid(ident.study_uid, 1, "series")
    rows, cols = cfg.dx_size
    spacing = cfg.dx_field_mm / max(rows, cols)
    out = root / "pelvis_dx" / ident.patient_id / ident.study_date / "1"
    files, uids, images = [], [], []
    for k in range(cfg.dx_images):
        shift = (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02)))
        rad = pelvis_radiograph(rows, cols, rng, findings, shift)
        sop_uid = d.uid(series_uid, k)
        path = d.write(_dx_dataset(ident, sop_uid, series_uid, k, rad.pixels, spacing), out / f"{k + 1:05d}.dcm")
        files.append(str(path))
        uids.append(sop_uid)
        images.append({"sop_instance_uid": sop_uid, "boxes": rad.boxes})
    s = SeriesTruth(series_uid, "DX", "PELVIS AP", 1, files, uids, d.DX_PRESENTATION_STORAGE)
    return StudyTruth("pelvis_dx", ident.patient_id, ident.issuer, ident.study_uid, ident.accession,
                      ident.study_date, tp, [s], {"hips": dict(findings), "images": images})


def _patient_plans(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, list[dict[str, Any]]]:
    """Per-patient parameters drawn first, so adding timepoints does not reshuffle patients."""
    brain_plans = []
    for _ in range(cfg.brain_patients):
        growth = [1.0]
        for _ in range(cfg.timepoints - 1):
            growth.append(float(np.clip(growth[-1] * rng.uniform(0.8, 1.35), 0.6, 1.6)))
        brain_plans.append({
            "centre": (float(rng.uniform(-30, 30)), float(rng.uniform(-35, 35)), float(rng.uniform(-15, 25))),
            "radii": (float(rng.uniform(11, 16)), float(rng.uniform(10, 15)), float(rng.uniform(9, 13))),
            "growth": growth,
        })
    liver_plans = []
    for _ in range(cfg.liver_patients):
        liver_plans.append({
            "split_x": float(rng.uniform(-30, -10)),
            "scale": [float(rng.uniform(0.85, 1.05)) for _ in range(cfg.timepoints)],
        })
    hip_plans = []
    for _ in range(cfg.hip_patients):
        first = {side: HIP_FINDINGS[int(rng.integers(0, 3))] for side in ("right", "left")}
        seq = [first]
        for _ in range(cfg.timepoints - 1):
            # a fracture gets fixed (hardware); otherwise what was there stays
            seq.append({s: ("hardware" if f == "fracture" else f) for s, f in seq[-1].items()})
        hip_plans.append({"findings": seq})
    return {"brain": brain_plans, "liver": liver_plans, "hip": hip_plans}


def synthesize(out: Path, cfg: SynthConfig | None = None) -> dict[str, Any]:
    """Write every study for ``cfg`` under ``out`` and return (and write) the ground truth."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    rng = np.random.default_rng(cfg.seed)
    plans = _patient_plans(cfg, rng)
    studies: list[StudyTruth] = []
    for tp in range(cfg.timepoints):
        for n, plan in enumerate(plans["brain"]):
            studies.append(_brain_study(out, cfg, n, tp, np.random.default_rng([cfg.seed, 1, n, tp]), plan))
        for n, plan in enumerate(plans["liver"]):
            studies.append(_liver_study(out, cfg, n, tp, np.random.default_rng([cfg.seed, 2, n, tp]), plan))
        for n, plan in enumerate(plans["hip"]):
            studies.append(_hip_study(out, cfg, n, tp, np.random.default_rng([cfg.seed, 3, n, tp]), plan))
    truth: dict[str, Any] = {
        "format": "radstream-synth-ground-truth", "format_version": FORMAT_VERSION, "seed": cfg.seed,
        "note": "Synthetic phantoms, not patient images. " + REFERENCE_NOTE,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "studies": [asdict(s) for s in studies],
    }
    for s in truth["studies"]:
        for se in s["series"]:
            se["files"] = [str(Path(f).relative_to(out)) for f in se["files"]]
    (out / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=2))
    return truth


def load_truth(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(out) / GROUND_TRUTH_FILE).read_text())
    return data
