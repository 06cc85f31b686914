"""The clinical story through the real chain, driven only from outside.

One private stack for the module (Kafka, PostgreSQL, Triton, and every radstream process as
real processes: SCP, aggregator, dispatcher, workers, both sinks, the review app). Data goes in
only by C-STORE (``radstream send`` and dcmtk's ``storescu``); what is checked is only what a
user sees: the review app's pages over HTTP (signed in with accounts made by ``radstream users
add``), the SQL views a dashboard reads, and the results topic read by an independent consumer.
No event is built by hand and no writer is called here.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from radstream.bench.stack import BenchStack, StackConfig
from tests.integration.story_support import PASSWORD, Browser, Study, cells, cli, csrf, send, studies, view
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom,
              pytest.mark.timeout(900)]

THRESHOLD_PCT = 25.0  # the brain pipeline's progression threshold (settings default)
VOLUME_TOLERANCE_PCT = 2.0


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Study]]:
    from radstream.synth.generate import SynthConfig, synthesize

    brain, hip = tmp_path_factory.mktemp("story-brain"), tmp_path_factory.mktemp("story-hip")
    synthesize(brain, SynthConfig(seed=1601, brain_patients=1, liver_patients=0, hip_patients=0, timepoints=4,
                                  mr_shape=(24, 64, 64)))
    synthesize(hip, SynthConfig(seed=1602, brain_patients=0, liver_patients=0, hip_patients=2, timepoints=1,
                                dx_size=(256, 256), dx_images=2))
    late = tmp_path_factory.mktemp("story-late")
    synthesize(late, SynthConfig(seed=1603, brain_patients=1, liver_patients=0, hip_patients=0, timepoints=1,
                                 mr_shape=(24, 64, 64)))
    return {"brain": studies(brain), "hip": studies(hip), "late": studies(late)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    st = BenchStack(tmp_path_factory.mktemp("story-stack"),
                    StackConfig(series_quiet_s=3.0, patient_quiet_s=4.0, topic_prefix="story",
                                pipelines=("brain-tumour", "hip-fracture"), web=True))
    try:
        st.up()
        for name, role in (("reader1", "reader"), ("qc1", "qc")):
            cli(st, "users", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        yield st
    finally:
        st.down()


def _brain_rows(stack: BenchStack) -> list[dict[str, Any]]:
    return view(stack, "SELECT * FROM v_longitudinal WHERE pipeline = 'brain-tumour' AND measurement = 'volume'"
                        " ORDER BY timepoint")


def _wait_rows(stack: BenchStack, n: int, what: str) -> None:
    eventually(lambda: len(_brain_rows(stack)) == n, 120, what=what)


def _results_topic(stack: BenchStack) -> list[Any]:
    from radstream.events.codec import codec_for
    from radstream.kafka.read_to_end import read_to_end

    codec = codec_for(stack.settings)
    return [codec.decode(m.value()) for m in read_to_end(stack.settings, [stack.settings.topic("results")],
                                                          timeout=30, client_id="story-reader")
            if m.value() is not None]


def _check_longitudinal(rows: list[dict[str, Any]], arrived: list[Study]) -> None:
    """Baseline, priors, changes and progression as the study dates (not the arrival order) give them."""
    by_date = sorted(arrived, key=lambda s: s.study_date)
    assert [r["study_instance_uid"] for r in rows] == [s.study_uid for s in by_date]
    assert [r["study_date"] for r in rows] == [date.fromisoformat(s.iso_date) for s in by_date]
    assert all(r["ordered_by"] == "study_date" for r in rows)
    assert all(r["study_description"] for r in rows)
    base = rows[0]["volume_ml"]
    for i, (r, s) in enumerate(zip(rows, by_date, strict=True)):
        truth = s.truth["volumes_ml"]["lesion"]
        assert abs(r["volume_ml"] - truth) <= truth * VOLUME_TOLERANCE_PCT / 100, (r["volume_ml"], truth)
        assert r["timepoint"] == i + 1 and r["baseline_study_instance_uid"] == by_date[0].study_uid
        if i == 0:
            assert r["prior_study_instance_uid"] is None and r["progression"] is False
            continue
        assert r["prior_study_instance_uid"] == by_date[i - 1].study_uid
        assert r["change_from_baseline_pct"] == pytest.approx(100.0 * (r["volume_ml"] - base) / base)
        assert r["change_from_prior_ml"] == pytest.approx(r["volume_ml"] - rows[i - 1]["volume_ml"])
        assert r["progression"] is (100.0 * (r["volume_ml"] - base) / base > THRESHOLD_PCT)


def test_brain_timepoints_sent_out_of_order_are_ordered_by_study_date(
    stack: BenchStack, exams: dict[str, list[Study]]
) -> None:
    brain = exams["brain"]
    assert len(brain) == 4 and len({s.study_date for s in brain}) == 4
    arrived: list[Study] = []
    for index in (2, 0, 3, 1):  # the 3rd, the 1st, the 4th, the 2nd
        study = brain[index]
        send(stack, study, with_dcmtk=index == 0)
        arrived.append(study)
        _wait_rows(stack, len(arrived), f"the brain result of timepoint {index + 1}")
        _check_longitudinal(_brain_rows(stack), arrived)

    rows = _brain_rows(stack)
    assert any(r["progression"] for r in rows[1:]), "the synthetic lesion grows past the threshold"

    # the result topic, read by a consumer of our own, carries each study's date and description
    results = {e.study_instance_uid: e for e in _results_topic(stack) if e.pipeline == "brain-tumour"}
    for s in brain:
        assert results[s.study_uid].study_date == s.study_date
        assert results[s.study_uid].study_description

    # the reader's pages
    reader = Browser(stack.web_url, "reader1")
    worklist = reader.get("/worklist?pipeline=brain-tumour")
    assert worklist.status_code == 200
    wl_rows = cells(worklist.text, "worklist")
    for s in brain:
        row = next(c for c in wl_rows if s.accession in c)
        assert s.iso_date in row, row
        assert rows[0]["study_description"] in row, row

    latest = rows[-1]
    page = reader.get(f"/results/{latest['result_id']}")
    assert page.status_code == 200
    by_date = sorted(brain, key=lambda s: s.study_date)
    assert by_date[-1].iso_date in re.search(r'id="study-date">(.*?)</dd>', page.text, re.S).group(1)  # type: ignore[union-attr]
    priors = cells(page.text, "priors-1")
    assert [c[1] for c in priors] == [s.iso_date for s in by_date]
    assert [c[0] for c in priors] == ["1", "2", "3", "4"]
    # the plot's x axis is the study date: the points' dates in order, spaced by the days between them
    points = re.findall(r'<circle class="point" cx="([\d.]+)"[^>]*><title>(\d{4}-\d\d-\d\d):', page.text)
    assert [d for _, d in points] == [s.iso_date for s in by_date]
    xs = [float(x) for x, _ in points]
    days = [date.fromisoformat(d).toordinal() for _, d in points]
    for i in range(1, len(xs)):
        assert (xs[i] - xs[0]) / (xs[-1] - xs[0]) == pytest.approx((days[i] - days[0]) / (days[-1] - days[0]),
                                                                   abs=0.01)
    _screenshot(stack, f"/results/{latest['result_id']}", reader)


def _screenshot(stack: BenchStack, path: str, reader: Browser) -> None:
    """The brain result page in headless Chromium, signed in with the reader's session cookie."""
    from playwright.sync_api import sync_playwright  # installed by scripts/bootstrap.sh, as Chromium is

    chromium = os.environ.get("RADSTREAM_CHROMIUM", "/usr/bin/chromium")
    assert Path(chromium).exists(), f"no Chromium at {chromium} (scripts/bootstrap.sh installs it)"
    shots = Path(__file__).resolve().parents[2] / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    cookies = [{"name": c.name, "value": c.value or "", "url": stack.web_url} for c in reader.http.cookies.jar]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            ctx = browser.new_context(viewport={"width": 1200, "height": 1400})
            ctx.add_cookies(cookies)  # type: ignore[arg-type]
            tab = ctx.new_page()
            tab.goto(stack.web_url + path)
            dates = tab.locator("#priors-1 td.tp-date").all_inner_texts()
            assert dates == sorted(dates) and len(dates) == 4
            tab.screenshot(path=str(shots / "story_brain_longitudinal.png"), full_page=True)
        finally:
            browser.close()


def test_hip_results_reach_readers_only_after_qc_approval(stack: BenchStack, exams: dict[str, list[Study]]) -> None:
    approved, rejected = exams["hip"]
    for s in (approved, rejected):
        cli(stack, "send", str(s.folder), "--aet", "DX01", "--no-progress")

    def hip() -> dict[str, dict[str, Any]]:
        return {r["study_instance_uid"]: r for r in view(
            stack, "SELECT * FROM v_worklist WHERE pipeline = 'hip-fracture'")}

    eventually(lambda: len(hip()) == 2, 180, what="both hip results")
    rows = hip()
    assert {r["qc_status"] for r in rows.values()} == {"pending"}
    ok_id, bad_id = rows[approved.study_uid]["result_id"], rows[rejected.study_uid]["result_id"]

    reader = Browser(stack.web_url, "reader1")
    assert approved.accession not in reader.get("/worklist").text
    assert reader.get(f"/results/{ok_id}").status_code in (403, 404)  # not before QC

    qc = Browser(stack.web_url, "qc1")
    queue = qc.get("/qc").text
    assert approved.accession in queue and rejected.accession in queue
    assert qc.submit(f"/qc/{ok_id}", {"decision": "APPROVED", "reason": ""}).status_code == 200
    assert qc.submit(f"/qc/{bad_id}", {"decision": "REJECTED", "reason": "wrong side marker"}).status_code == 200

    eventually(lambda: {r["qc_status"] for r in hip().values()} == {"approved", "rejected"}, 60,
               what="the QC decisions stored by the feedback sink")
    worklist = reader.get("/worklist").text
    assert approved.accession in worklist and rejected.accession not in worklist
    assert reader.get(f"/results/{ok_id}").status_code == 200
    # the rejected exam stays out of reach, also by deep links
    assert reader.get(f"/results/{bad_id}").status_code in (403, 404)
    for link in (f"/studies/{rejected.study_uid}", f"/accession/{rejected.accession}"):
        r = reader.get(link)
        assert bad_id not in r.text and f"/results/{bad_id}" not in str(r.url), link


def test_late_instances_amend_the_result_and_the_worklist_shows_it_once(
    stack: BenchStack, exams: dict[str, list[Study]]
) -> None:
    (study,) = exams["late"]
    files = sorted(study.folder.glob("*.dcm"))
    assert len(files) == 24
    cli(stack, "send", *map(str, files[:18]), "--aet", "MR02", "--no-progress")

    def results() -> list[dict[str, Any]]:
        return view(stack, "SELECT * FROM v_worklist WHERE study_instance_uid = %s ORDER BY stored_at",
                     study.study_uid)

    eventually(lambda: len(results()) == 1, 120, what="the result of the partial series")
    (first,) = results()
    # the rest of the series arrives after its result exists (a re-send, late images)
    cli(stack, "send", *map(str, files[18:]), "--aet", "MR02", "--no-progress")
    eventually(lambda: len(results()) == 2, 120, what="the amended result")
    old, new = results()
    assert old["result_id"] == first["result_id"]
    assert old["superseded_by_result_id"] == new["result_id"] and new["amends_result_id"] == old["result_id"]
    assert new["superseded_by_result_id"] is None

    # the amended result is the one that stands: on the longitudinal view, with the whole series' volume
    (tp,) = view(stack, "SELECT * FROM v_longitudinal WHERE study_instance_uid = %s AND measurement = 'volume'",
                  study.study_uid)
    truth = study.truth["volumes_ml"]["lesion"]
    assert tp["result_id"] == new["result_id"]
    assert abs(tp["volume_ml"] - truth) <= truth * VOLUME_TOLERANCE_PCT / 100

    reader = Browser(stack.web_url, "reader1")
    worklist = reader.get("/worklist").text
    assert sum(study.accession in " ".join(row) for row in cells(worklist, "worklist")) == 1
    assert new["result_id"] in worklist and old["result_id"] not in worklist
    page = reader.get(f"/results/{new['result_id']}").text
    assert 'id="amended"' in page and "Amended result" in page
    before = reader.get(f"/results/{old['result_id']}").text
    assert 'id="superseded"' in before and f"/results/{new['result_id']}" in before
    # a PACS button's deep link opens the current result
    r = reader.get(f"/studies/{study.study_uid}")
    assert r.status_code == 200 and str(r.url).endswith(f"/results/{new['result_id']}")

    # a reader corrects the amended result's segmentation in a tool of theirs and uploads it (a 400-voxel block)
    seg, expected_ml = _corrected_seg(study.folder)
    form = reader.get(f"/results/{new['result_id']}").text
    r = reader.http.post(f"/results/{new['result_id']}/feedback",
                         data={"csrf_token": csrf(form), "f0_agree": "disagree", "comment": "lesion redrawn"},
                         files={"seg_file": ("corrected.dcm", seg, "application/dicom")})
    assert r.status_code == 200, r.text[:500]

    def correction() -> list[str]:
        page = reader.get(f"/results/{new['result_id']}").text
        priors = cells(page, "priors-1")
        return priors[0] if priors and "by " in priors[0][4] else []  # #, date, accession, volume, corrected

    eventually(lambda: bool(correction()), 60, what="the corrected volume on the page")
    row = correction()
    corrected = float(row[4].split()[0])
    assert corrected == pytest.approx(expected_ml, rel=0.01)
    assert "by reader1" in row[4] and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[4])
    assert float(row[3]) == pytest.approx(tp["volume_ml"], abs=0.01)  # the model's volume stays beside it
    (c,) = view(stack, "SELECT * FROM v_corrections WHERE result_id = %s", new["result_id"])
    assert c["corrected_by"] == "reader1" and c["corrected_volume_ml"] == pytest.approx(expected_ml, rel=0.01)


def _corrected_seg(folder: Path) -> tuple[bytes, float]:
    """A DICOM SEG of the series in ``folder`` (as a segmentation tool writes it) and its volume in mL."""
    import highdicom as hd
    import numpy as np
    import pydicom
    from pydicom.sr.codedict import codes

    sources = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=bool)
    mask[10:14, 20:30, 20:30] = True
    dy, dx = (float(v) for v in sources[0].PixelSpacing)
    dz = abs(float(sources[1].ImagePositionPatient[2]) - float(sources[0].ImagePositionPatient[2]))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="lesion",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid=hd.UID(), series_number=901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="story-test", manufacturer_model_name="hand correction", software_versions="1",
        device_serial_number="1", series_description="corrected lesion")
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue(), 400 * dx * dy * dz / 1000.0


def test_report_figures_match_what_the_story_did(stack: BenchStack, exams: dict[str, list[Study]]) -> None:
    """`radstream report` after the scenarios above (it reads what they sent and did; run the module whole)."""
    import csv

    import numpy as np

    out = stack.home / "story-report.csv"
    cli(stack, "report", "--csv", str(out))
    report = {r["pipeline"]: r for r in csv.DictReader(out.open())}
    brain = report["brain-tumour"]
    studies = {s.study_uid for s in exams["brain"] + exams["late"]}
    assert int(brain["exams_received"]) == len(studies) == 5
    assert int(brain["exams_processed"]) == 5 and int(brain["exams_failed"]) == 0
    rows = view(stack, "SELECT * FROM v_worklist WHERE pipeline = 'brain-tumour'")
    assert int(brain["results"]) == len(rows) == 6  # the late study's first result and its amendment
    # turnaround from the real timestamps: the last instance's arrival (as the results topic carries it)
    # to the result stored (the worklist view)
    topic = {e.result_id: e for e in _results_topic(stack) if e.pipeline == "brain-tumour"}
    turnaround = []
    for r in rows:
        assert topic[r["result_id"]].last_received_at == r["last_received_at"]
        turnaround.append((r["stored_at"] - r["last_received_at"]).total_seconds())
    assert all(0 < t < 120 for t in turnaround), turnaround
    assert float(brain["turnaround_s_mean"]) == pytest.approx(float(np.mean(turnaround)), abs=1e-3)
    assert float(brain["turnaround_s_p50"]) == pytest.approx(float(np.percentile(turnaround, 50)), abs=1e-3)
    assert float(brain["turnaround_s_p90"]) == pytest.approx(float(np.percentile(turnaround, 90)), abs=1e-3)
    # one review (the corrected SEG), one finding judged, in disagreement
    assert int(brain["reviews_done"]) == 1 and int(brain["results_reviewed"]) == 1
    assert int(brain["findings_judged"]) == 1 and float(brain["agreement_pct"]) == 0.0
    assert 0 <= float(brain["review_time_s_mean"]) < 300
    hip = report["hip-fracture"]
    assert int(hip["exams_received"]) == 2 and int(hip["exams_processed"]) == 2 and int(hip["reviews_done"]) == 0
