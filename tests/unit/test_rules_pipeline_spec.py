"""Pipeline files: validation, conditions (regex, ranges, lists), selection rules and the rules tester."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from radstream.stream_apps.rules_tester import explain

from radstream.events.models import Trigger
from radstream.pipelines.rules import SeriesFacts, evaluate, orientation_label, requirements_met, select
from radstream.pipelines.spec import DEFAULT_PIPELINES_DIR, PipelineSpec, load_pipelines
from radstream.settings import Settings

pytestmark = pytest.mark.unit

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def spec(**kw: object) -> PipelineSpec:
    return PipelineSpec.model_validate({"name": "p", "model": {"name": "m", "version": "2"},
                                        "operators": [{"op": "load_series"}], **kw})


def facts(desc: str = "AX FLAIR", n: int = 20, iop: list[float] = AXIAL, **attrs: object) -> SeriesFacts:
    a = {"Modality": "MR", "BodyPartExamined": "BRAIN", "SeriesDescription": desc, "ImageOrientationPatient": iop,
         "SliceThickness": 3.0, "CalledAETitle": "RADSTREAM", "StationName": "MR-1", "SeriesNumber": 3, **attrs}
    return SeriesFacts("1.2", f"1.2.{desc}.{n}", n, a)


def test_reference_pipeline_files_validate_whole() -> None:
    specs = {p.name: p for p in load_pipelines(DEFAULT_PIPELINES_DIR)}
    assert {"brain-tumour", "liver", "hip-fracture"} <= set(specs)
    assert specs["hip-fracture"].trigger == [Trigger.STUDY_COMPLETE]
    assert Trigger.SERIES_COMPLETE in specs["brain-tumour"].trigger
    assert specs["hip-fracture"].qc_required and not specs["brain-tumour"].qc_required
    assert specs["liver"].blinded and not specs["brain-tumour"].blinded
    assert specs["liver"].operators and specs["liver"].model.name


def test_unknown_keys_anywhere_in_a_file_are_refused() -> None:
    for bad in ({"outputs": ["seg"]}, {"qc_requried": True},
                {"model": {"name": "m", "tensors": 3}},
                {"operators": [{"op": "load_series", "parms": {}}]}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            spec(**bad)


def test_invalid_files_are_rejected() -> None:
    with pytest.raises(ValidationError):
        spec(trigger="WHENEVER")
    with pytest.raises(ValidationError):
        spec(routing={"modality": ["MR"], "typo_field": 1})
    with pytest.raises(ValidationError):
        spec(selection={"series_description": ["(unclosed"]})
    with pytest.raises(ValidationError):
        spec(trigger="RULE")  # RULE needs `require`
    with pytest.raises(ValidationError):
        PipelineSpec.model_validate({"name": "no-model"})


def test_routing_regex_lists_ranges_and_any_tag() -> None:
    s = spec(routing={"modality": ["MR"], "called_ae_title": "^RADSTREAM$", "station": "^mr-",
                      "tags": {"SeriesNumber": {"min": 2, "max": 10}, "Manufacturer": {"regex": ["siemens"]}}})
    assert evaluate(s, facts(Manufacturer="SIEMENS Healthineers")).selected
    v = evaluate(s, facts(Manufacturer="GE"))
    assert not v.selected and any("NO  routing.Manufacturer" in r for r in v.reasons)
    assert not evaluate(s, facts(Manufacturer="Siemens", SeriesNumber=11)).selected
    assert not evaluate(s, facts(Manufacturer="Siemens", CalledAETitle="RADSTREAM2")).selected
    missing = evaluate(s, facts())
    assert not missing.selected and any("Manufacturer: missing" in r for r in missing.reasons)


def test_selection_description_orientation_slices_thickness() -> None:
    s = spec(selection={"series_description": ["flair"], "exclude_description": ["localizer"],
                        "orientation": ["axial"], "min_instances": 10, "slice_thickness": {"max": 5}})
    assert evaluate(s, facts()).selected
    assert not evaluate(s, facts("T1 MPRAGE")).selected
    assert not evaluate(s, facts("FLAIR localizer")).selected
    assert not evaluate(s, facts(iop=SAGITTAL)).selected
    assert not evaluate(s, facts(n=9)).selected
    assert not evaluate(s, facts(SliceThickness=6.0)).selected
    assert [orientation_label(x) for x in (AXIAL, SAGITTAL, CORONAL)] == ["axial", "sagittal", "coronal"]
    assert orientation_label([1.0, 0.0, 0.0, 0.0, 0.7071, 0.7071]) == "oblique"


def test_pick_latest_and_most_instances() -> None:
    a, b = facts(n=20, SeriesNumber=3), facts("AX FLAIR repeat", n=30, SeriesNumber=7)
    chosen, verdicts = select(spec(selection={"series_description": ["flair"], "pick": "latest"}), [a, b])
    assert chosen == [b] and not verdicts[a.series_instance_uid].selected
    chosen, _ = select(spec(selection={"pick": "most_instances"}), [a, b])
    assert chosen == [b]
    chosen, _ = select(spec(), [a, b])
    assert chosen == [a, b]


def test_required_series_rule() -> None:
    s = spec(trigger="RULE", require=[{"name": "flair", "series_description": ["flair"]},
                                      {"name": "t1c", "series_description": [r"t1.*(post|\+c)"]}])
    ok, reasons = requirements_met(s, [facts()])
    assert not ok and any("NO  t1c" in r for r in reasons)
    assert requirements_met(s, [facts(), facts("T1 POST GD")])[0]


def _write_series(folder: Path, study: str, desc: str, modality: str, n: int, iop: list[float]) -> str:
    series = generate_uid()
    for i in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.SeriesDescription, ds.BodyPartExamined = modality, desc, "BRAIN"
        ds.SeriesNumber, ds.InstanceNumber = 1 if "FLAIR" in desc else 2, i + 1
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [0, 0, i]
        ds.SliceThickness = 3
        ds.save_as(folder / f"{series}-{i}.dcm", enforce_file_format=True)
    return series


def test_rules_tester_explains_a_study_on_disk(tmp_path: Path, base_settings: Settings) -> None:
    study = generate_uid()
    flair = _write_series(tmp_path, study, "AX T2 FLAIR", "MR", 9, AXIAL)
    loc = _write_series(tmp_path, study, "SAG localizer", "MR", 3, SAGITTAL)
    (tmp_path / "notes.txt").write_text("not dicom")
    code, text = explain(base_settings, "brain-tumour", tmp_path)
    assert code == 0, text
    lines = text.splitlines()
    assert any("[SELECTED]" in ln and flair in ln for ln in lines)
    assert any("[skipped ]" in ln and loc in ln for ln in lines)
    assert "NO  selection.instances: 3 (min 8)" in text
    code, text = explain(base_settings, "liver", tmp_path)
    assert code == 1 and "matches none of ['CT']" in text
