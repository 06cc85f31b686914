"""Pipeline-file keys mean what they say, through the real chain: ``ae_titles``, rules on carried tags,
``qc_required`` and ``blinded``, each decided by the file alone (no setting names the pipeline).

Entered only as a modality enters (dcmtk's ``storescu`` to a called AE title) and read only as users read:
the worklist view a dashboard reads, the reader's and the QC reviewer's pages, and ``radstream rules
test``, which must say what the live dispatcher did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import yaml

from radstream.bench.stack import BenchStack, StackConfig
from radstream.pipelines.spec import DEFAULT_PIPELINES_DIR
from tests.integration.story_support import PASSWORD, Browser, Study, cli, studies, view
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom,
              pytest.mark.timeout(900)]

BRAIN_OPS = yaml.safe_load((DEFAULT_PIPELINES_DIR / "brain-tumour.yaml").read_text())["operators"]
MODEL = {"name": "brain_lesion_ref", "version": "1", "reference_model": True}
FLAIR = {"series_description": ["(?i)flair"], "min_instances": 8}
PIPELINES: dict[str, dict[str, Any]] = {
    # routed by a manufacturer rule and a tag that only the events' routing attributes carry;
    # its results wait for QC, and readers see them blinded
    "protocol-x": {"routing": {"modality": ["MR"], "manufacturer": "(?i)^acme",
                               "tags": {"ProtocolName": "^PROTO-X$"}},
                   "selection": FLAIR, "trigger": "SERIES_COMPLETE", "qc_required": True, "blinded": True},
    # its routing never matches an MR: only its AE title brings it anything
    "ae-only": {"routing": {"modality": ["CT"]}, "ae_titles": ["RS-TEST"], "selection": FLAIR,
                "trigger": "SERIES_COMPLETE"},
}


def _ops() -> list[dict[str, Any]]:
    return [op for op in BRAIN_OPS if op["op"] != "pacs_export"]


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Study]:
    from radstream.synth.generate import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("keys-exams")
    synthesize(root, SynthConfig(seed=2112, brain_patients=2, liver_patients=0, hip_patients=0, timepoints=1))
    a, b = studies(root)
    for f in sorted(a.folder.glob("*.dcm")):  # patient A's scanner: ACME, protocol PROTO-X
        ds = pydicom.dcmread(f)
        ds.Manufacturer, ds.ProtocolName = "ACME Medical", "PROTO-X"
        ds.save_as(f)
    return {"A": a, "B": b}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    folder = tmp_path_factory.mktemp("keys-pipelines")
    shutil.copy(DEFAULT_PIPELINES_DIR / "brain-tumour.yaml", folder / "brain-tumour.yaml")
    for name, body in PIPELINES.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "model": MODEL, "operators": _ops(),
                                                             **body}))
    st = BenchStack(tmp_path_factory.mktemp("keys-stack"),
                    StackConfig(topic_prefix="keys", pipelines=("brain-tumour", *PIPELINES), pipelines_dir=folder,
                                web=True))
    try:
        st.up()
        for name, role in (("reader1", "reader"), ("qc1", "qc")):
            cli(st, "users", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        yield st
    finally:
        st.down()


def _storescu(stack: BenchStack, study: Study, called: str) -> None:
    storescu = shutil.which("storescu")
    assert storescu, "dcmtk's storescu is needed (scripts/bootstrap.sh installs it)"
    files = sorted(str(p) for p in study.folder.glob("*.dcm"))
    out = subprocess.run([storescu, "-aet", "MR01", "-aec", called, "127.0.0.1", str(stack.dicom_port), *files],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr


def _rules_test(stack: BenchStack, pipeline: str, study: Study, called: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "radstream.cli", "rules", "test", pipeline, str(study.folder),
                          "--called-ae", called], env={**os.environ, **stack.env()}, capture_output=True, text=True,
                         timeout=120)
    return out.returncode, out.stdout + out.stderr


def _results(stack: BenchStack) -> dict[tuple[str, str], dict[str, Any]]:
    rows = view(stack, "SELECT * FROM v_worklist WHERE superseded_by_result_id IS NULL")
    return {(r["study_instance_uid"], r["pipeline"]): r for r in rows}


def test_the_scp_serves_the_ae_titles_of_the_pipelines_it_runs(stack: BenchStack) -> None:
    echoscu = shutil.which("echoscu")
    assert echoscu, "dcmtk's echoscu is needed (scripts/bootstrap.sh installs it)"

    def echo(called: str) -> bool:
        out = subprocess.run([echoscu, "-aet", "MR01", "-aec", called, "127.0.0.1", str(stack.dicom_port)],
                             capture_output=True, text=True, timeout=60)
        return out.returncode == 0

    # the general title, brain-tumour's own (its file) and ae-only's; liver's file names RS-LIVER, but this
    # deployment does not run liver, so nothing would take what a modality sent there: refused
    assert echo("RADSTREAM") and echo("RS-BRAIN") and echo("RS-TEST")
    assert not echo("RS-LIVER") and not echo("RS-NOPE")


def test_pipeline_files_decide_routing_qc_and_blinding(stack: BenchStack, exams: dict[str, Study]) -> None:
    a, b = exams["A"], exams["B"]
    _storescu(stack, a, "RADSTREAM")  # the general AE title: every pipeline's routing rules decide
    _storescu(stack, b, "RS-TEST")  # ae-only's AE title: that pipeline, and only it

    want = {(a.study_uid, "brain-tumour"), (a.study_uid, "protocol-x"), (b.study_uid, "ae-only")}
    eventually(lambda: want <= set(_results(stack)), 240, what=f"results {sorted(p for _, p in want)}")
    # and nothing else, once the patients' quiet periods (and so a study-level dispatch) have passed too
    time.sleep(stack.config.patient_quiet_s + 8.0)
    results = _results(stack)
    assert set(results) == want, sorted(results)

    # the rules tester says what the live dispatcher did, on the same files and AE titles
    for pipeline, study, called, selected in (("protocol-x", a, "RADSTREAM", True), ("protocol-x", b, "RADSTREAM",
                                              False), ("ae-only", b, "RS-TEST", True), ("ae-only", a, "RADSTREAM",
                                              False), ("brain-tumour", b, "RS-TEST", False),
                                              ("brain-tumour", a, "RADSTREAM", True)):
        code, text = _rules_test(stack, pipeline, study, called)
        assert (code == 0) == selected, (pipeline, called, text)
    code, text = _rules_test(stack, "brain-tumour", b, "RS-TEST")
    assert "names ['ae-only']" in text, text

    # qc_required: the protocol-x result waits for QC; brain-tumour's does not
    px, brain = results[(a.study_uid, "protocol-x")], results[(a.study_uid, "brain-tumour")]
    assert px["qc_required"] and px["qc_status"] == "pending"
    assert not brain["qc_required"]
    reader = Browser(stack.web_url, "reader1")
    worklist = reader.get("/worklist").text
    assert str(brain["result_id"]) in worklist and str(px["result_id"]) not in worklist
    qc = Browser(stack.web_url, "qc1")
    assert str(px["result_id"]) in qc.get("/qc").text
    assert qc.submit(f"/qc/{px['result_id']}", {"decision": "APPROVED", "reason": ""}).status_code == 200
    eventually(lambda: _results(stack)[(a.study_uid, "protocol-x")]["qc_status"] == "approved", 60,
               what="the QC approval in the worklist view")
    assert str(px["result_id"]) in reader.get("/worklist").text

    # blinded: the reader knows the protocol-x result by its hash only; brain-tumour's names its model
    blinded = reader.get(f"/results/{px['result_id']}").text
    plain = reader.get(f"/results/{brain['result_id']}").text
    assert px["blinding_hash"] and px["blinding_hash"] in blinded
    at = blinded.find("brain_lesion_ref")
    assert at < 0, blinded[max(0, at - 400):at + 100]
    assert "brain_lesion_ref" in plain and not brain["blinding_hash"]
