"""A real network on a real image: deepbet brain extraction on Colin27 through the real chain.

Colin27 (Debian ``mricron-data``) goes in by C-STORE (dcmtk's ``storescu``) as the DICOM MR series
``radstream synth --from-nifti`` writes; the SCP, aggregator and dispatcher route it to the
``brain-extraction`` pipeline;
deepbet's two networks (ONNX rebuilt from the weights in its PyPI wheel, ``radstream triton build
--deepbet``, cached) run behind a real Triton server; the worker answers with a DICOM SEG (the brain
mask) and an SR (the brain volume), and the results sink writes the result row and its measurement,
read here from PostgreSQL and the result page. The mask is compared with
``ch2bet.nii.gz``, the brain mask shipped with Colin27 (made with FSL's BET, not by deepbet), twice:
here voxel by voxel, and as a user does it — ch2bet written as a DICOM SEG on the series, sent by
C-STORE from a reference source's AE title, and ``radstream report`` giving the pipeline's Dice
against it. deepbet's own ``run_bet`` gives Dice 0.936 and 1956 mL against ch2bet's 1737 mL on it
(README, "A real model"), so the bounds here are deepbet's own figures, not the 0.95 / 3 % the issue
hoped for."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from radstream.bench.stack import BenchStack, StackConfig
from radstream.models import deepbet
from radstream.models.build import build_repository
from radstream.store import path_for_uri
from radstream.synth.nifti import nifti_mask_to_seg, nifti_to_dicom
from tests.integration.story_support import PASSWORD, Browser, cells, cli, view
from tests.integration.test_infer_pipelines import _dciodvfy_errors
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom, pytest.mark.slow,
              pytest.mark.timeout(600)]

TEMPLATES = Path("/usr/share/mricron/templates")
PIPELINE = "brain-extraction"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    """A private stack (SCP, aggregator, dispatcher, brain-extraction worker, results sink, Kafka, PostgreSQL)
    with a Triton serving the reference models and deepbet's networks."""
    repo = tmp_path_factory.mktemp("deepbet-repository")
    build_repository(repo)
    deepbet.build_repository(repo)  # the wheel from PyPI once, into ~/.cache/radstream/deepbet
    st = BenchStack(tmp_path_factory.mktemp("deepbet-stack"),
                    StackConfig(topic_prefix="bet", pipelines=(PIPELINE,), triton_repository=repo, web=True,
                                extra_env={"RADSTREAM_TRITON__REQUEST_TIMEOUT_S": "300"}))
    try:
        st.up()
        cli(st, "users", "add", "reader1", "--role", "reader", "--password-stdin", stdin=PASSWORD + "\n")
        cli(st, "study", "sources", "add", "ch2bet", "--kind", "reference", "--ae", "REF-BET",
            "--description", "FSL BET brain mask shipped with Colin27")
        yield st
    finally:
        st.down()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_colin27_brain_extraction(stack: BenchStack, tmp_path: Path) -> None:
    assert (TEMPLATES / "ch2.nii.gz").exists(), "Debian mricron-data is not installed: run scripts/bootstrap.sh"
    series = nifti_to_dicom(TEMPLATES / "ch2.nii.gz", tmp_path / "dcm", patient_id="COLIN27",
                            series_description="T1 3D Colin27")
    reference = nifti_mask_to_seg(TEMPLATES / "ch2bet.nii.gz", series, tmp_path / "ch2bet-seg.dcm")
    _storescu(stack, "MR01", series.files)
    _storescu(stack, "REF-BET", [reference])  # the reference source's segmentation tool

    def row() -> dict[str, Any] | None:
        rows = view(stack, "SELECT * FROM results WHERE study_instance_uid = %s AND pipeline = %s",
                    series.study_uid, PIPELINE)
        return rows[0] if rows else None

    res = eventually(row, timeout=240, interval=1.0, what="the Colin27 result row")
    assert res["status"] == "completed", res
    assert res["model_name"] == "deepbet_brain" and res["seg_uri"] and res["sr_uri"]
    timings = res["timings_ms"]
    assert {"triton_bbox_ms", "triton_brain_ms", "brain_extraction", "total"} <= set(timings), timings
    volumes = view(stack, "SELECT label, value, unit FROM measurements WHERE result_id = %s", res["result_id"])
    assert [(m["label"], m["unit"]) for m in volumes] == [("brain", "mL")]
    volume = float(volumes[0]["value"])

    seg = hd.seg.segread(path_for_uri(res["seg_uri"], stack.settings.store_root))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["brain"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    assert not _dciodvfy_errors(path_for_uri(res["seg_uri"], stack.settings.store_root))
    sops = [str(u) for u in _sop_uids(series.files)]
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, segment_numbers=[1],
                                             ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    mask = np.asarray(mask[..., 0] > 0)  # (slices, rows, columns), the series' own order (axial, L/P/S)
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(TEMPLATES / "ch2bet.nii.gz")), "LPS")) > 0
    assert mask.shape == ref.shape
    d = dice(mask, ref)
    ref_ml = float(ref.sum()) / 1000.0  # 1 mm isotropic
    assert abs(volume - mask.sum() / 1000.0) < 0.5  # the SR's volume is the SEG's
    print(f"Colin27: Dice vs ch2bet {d:.4f}, brain {volume:.1f} mL vs ch2bet {ref_ml:.1f} mL, "
          f"timings {timings}")
    assert d >= 0.93, d  # deepbet's own run_bet: 0.9358
    assert abs(volume - 1956.5) <= 0.01 * 1956.5, volume  # deepbet's own run_bet: 1956.468 mL
    sr = hd.sr.srread(path_for_uri(res["sr_uri"], stack.settings.store_root))
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == 1
    assert not _dciodvfy_errors(path_for_uri(res["sr_uri"], stack.settings.store_root))


    # what a user sees: the validation figures against the reference, and the result page
    # registered by the feedback sink (pending until its series is indexed: the report checks it then)
    eventually(lambda: view(stack, "SELECT 1 FROM segmentations WHERE source = 'ch2bet' AND status <> 'refused'"),
               timeout=60, interval=1.0, what="the reference SEG registered")
    report = cli(stack, "report", "--pipeline", PIPELINE, "--csv", str(tmp_path / "report.csv"))
    print(report)
    m = re.search(r"ch2bet / brain: 1 exams, Dice ([0-9.]+) \(min [0-9.]+\), volume ([0-9.]+) mL vs ([0-9.]+) mL "
                  r"\(([+-][0-9.]+) %\)", report)
    assert m, report
    assert abs(float(m.group(1)) - d) < 1e-3 and abs(float(m.group(2)) - volume) < 0.5, report
    assert abs(float(m.group(3)) - ref_ml) < 0.5, report
    assert "exams processed  1" in report
    rows = list(csv.DictReader((tmp_path / "report-reference.csv").open()))
    assert [(r["reference"], r["label"], r["exams"]) for r in rows] == [("ch2bet", "brain", "1")]
    page = Browser(stack.web_url, "reader1").get(f"/results/{res['result_id']}")
    assert page.status_code == 200
    measured = {row[1]: row for row in cells(page.text, "measurements-table")}  # name, label, value, unit
    assert "brain" in measured and measured["brain"][3] == "mL", measured
    assert abs(float(measured["brain"][2].replace(",", "")) - volume) < 0.5, measured
    assert "ch2bet" not in page.text  # a reference is for the report, not for readers


def _storescu(stack: BenchStack, calling_ae: str, files: list[Path]) -> None:
    storescu = shutil.which("storescu")
    assert storescu, "dcmtk's storescu is needed (scripts/bootstrap.sh installs it)"
    # -R: propose only the SOP classes of the files (a SEG is not among storescu's defaults)
    out = subprocess.run([storescu, "-R", "-aet", calling_ae, "-aec", "RADSTREAM", "127.0.0.1", str(stack.dicom_port),
                          *(str(f) for f in files)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr


def _sop_uids(files: list[Path]) -> list[str]:
    import pydicom

    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
