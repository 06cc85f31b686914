"""The paper's blinded multi-reader liver study, through the real chain and driven only from outside.

One private stack (Kafka, PostgreSQL, Triton, every radstream process). Liver CTs go in by
``radstream send``; human segmentations come from a segmentation tool by dcmtk's ``storescu``
(calling AE title = source) or are uploaded by the study lead in the review app. Three readers
rate every segmentation of each exam in their own random order, knowing each only by its hash;
the test then looks for the source in everything a reader can fetch, and checks the lead's
unblinded report (ratings, review times, volumes, Dice and volume difference per label) against
what the readers did and the phantom's truth.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pydicom
import pytest
from pydicom.uid import generate_uid

from radstream.bench.stack import BenchStack, StackConfig
from radstream.synth.human_seg import human_segmentation
from tests.integration.story_support import PASSWORD, Browser, Study, cli, csrf, send, studies, view
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom,
              pytest.mark.timeout(900)]

READERS = ("reader1", "reader2", "reader3")
SOURCES = {"expert": "SEG-EXPERT", "novice": "SEG-NOVICE"}
# what a reader must never find in anything they can fetch
SECRETS = ("expert", "novice", "seg-expert", "seg-novice", "resident", "liver_lobes_ref", "model:", "manual",
           "^reader")


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> list[Study]:
    from radstream.synth.generate import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("blinded-liver")
    synthesize(root, SynthConfig(seed=1701, brain_patients=0, liver_patients=3, hip_patients=0, timepoints=1))
    return studies(root)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    st = BenchStack(tmp_path_factory.mktemp("blinded-stack"),
                    StackConfig(series_quiet_s=3.0, patient_quiet_s=4.0, topic_prefix="blinded", pipelines=("liver",),
                                web=True, extra_env={"RADSTREAM_ENVIRONMENT": "development"}))
    try:
        st.up()
        cli(st, "users", "add", "lead", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
        for name in READERS:
            cli(st, "users", "add", name, "--role", "reader", "--password-stdin", stdin=PASSWORD + "\n")
        yield st
    finally:
        st.down()


def _storescu(stack: BenchStack, path: Path, aet: str) -> None:
    storescu = shutil.which("storescu")
    assert storescu, "dcmtk's storescu is needed (scripts/bootstrap.sh installs it)"
    # -R: propose only the files' own SOP classes (dcmtk's default list has no Segmentation Storage)
    out = subprocess.run([storescu, "-R", "-aet", aet, "-aec", "RADSTREAM", "127.0.0.1", str(stack.dicom_port),
                          str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _result_id(stack: BenchStack, study: Study) -> str:
    def ready() -> str | None:
        rows = view(stack, "SELECT result_id FROM v_worklist WHERE study_instance_uid = %s AND pipeline = 'liver' "
                           "AND superseded_by_result_id IS NULL", study.study_uid)
        return str(rows[0]["result_id"]) if rows else None

    return str(eventually(ready, 180, what=f"the liver result of {study.accession}"))


def _add_source(lead: Browser, fields: dict[str, str]) -> Any:
    token = csrf(lead.get("/admin/study").text)
    return lead.http.post("/admin/study/sources", data={**fields, "csrf_token": token})


def _report(lead: Browser) -> dict[str, Any]:
    r = lead.get("/admin/study/report.json?pipeline=liver")
    assert r.status_code == 200, r.text[:300]
    data: dict[str, Any] = r.json()
    return data


def _segs_on_page(page: str) -> list[str]:
    return re.findall(r'<div class="segcard" id="seg-([0-9a-f]+)">', page)


def _upload(lead: Browser, path: Path | bytes, source: str) -> Any:
    token = csrf(lead.get("/admin/study").text)
    data = path.read_bytes() if isinstance(path, Path) else path
    return lead.http.post("/admin/study/segmentations", data={"csrf_token": token, "source": source},
                          files={"seg_file": ("seg.dcm", data, "application/dicom")})


def _store_files(stack: BenchStack) -> int:
    return sum(1 for _ in (stack.settings.store_root / "sha256").rglob("*.dcm"))


def _fetchable(reader: Browser, start: str, depth_slices: int = 3) -> dict[str, bytes]:
    """Everything a reader reaches from a page: the page, its links, images, scripts, styles."""
    seen: dict[str, bytes] = {}
    page = reader.get(start)
    assert page.status_code == 200
    seen[start] = page.content
    links = set(re.findall(r'(?:href|src|action)="([^"]+)"', page.text))
    links |= set(re.findall(r'value="(/results/[^"]+/overlay/)"', page.text))
    for link in sorted(links):
        url = html.unescape(link)
        if url.startswith("#") or "/logout" in url or url.endswith("/rating") or url.endswith("/feedback"):
            continue
        targets = [url + f"{k}.png" for k in range(depth_slices)] if url.endswith("/overlay/") else [url]
        for t in targets:
            r = reader.get(urljoin(start, t))
            seen[t] = r.content
    return seen


def _in_chromium(stack: BenchStack, reader: Browser, case: str, hashes: list[str]) -> None:
    """The reader's page in headless Chromium: the overlay chooser and one rating through the form."""
    from playwright.sync_api import sync_playwright  # installed by scripts/bootstrap.sh, as Chromium is

    chromium = os.environ.get("RADSTREAM_CHROMIUM", "/usr/bin/chromium")
    assert Path(chromium).exists(), f"no Chromium at {chromium} (scripts/bootstrap.sh installs it)"
    shots = Path(__file__).resolve().parents[2] / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    cookies = [{"name": c.name, "value": c.value or "", "url": stack.web_url} for c in reader.http.cookies.jar]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            ctx = browser.new_context(viewport={"width": 1200, "height": 1500})
            ctx.add_cookies(cookies)  # type: ignore[arg-type]
            tab = ctx.new_page()
            tab.goto(f"{stack.web_url}/results/{case}")
            assert f"/segs/{hashes[0]}/overlay/" in (tab.get_attribute("#overlay-img", "src") or "")
            tab.select_option("#seg-choice", index=1)
            tab.wait_for_function(f"document.getElementById('overlay-img').src.includes('{hashes[1]}')")
            form = tab.locator(f"#rate-{hashes[1]}")
            form.locator("textarea[name=comment]").fill("second look in the browser")
            form.locator("button[type=submit]").click()
            tab.wait_for_selector("#flash")
            assert "second look in the browser" in tab.inner_text(f"#rating-{hashes[1]}")
            tab.screenshot(path=str(shots / "blinded_liver_reader.png"), full_page=True)
        finally:
            browser.close()


def _assert_blind(content: dict[str, bytes], case: str) -> None:
    for url, body in content.items():
        text = body.decode("latin-1").lower()
        for word in SECRETS:
            assert word not in text, f"{word!r} reached a reader in {url} ({case})"


def test_blinded_multi_reader_study(stack: BenchStack, exams: list[Study], tmp_path: Path) -> None:
    a, b, c = exams
    lead = Browser(stack.web_url, "lead")
    for name, ae in SOURCES.items():
        r = _add_source(lead, {"name": name, "calling_ae_title": ae, "kind": "human",
                                         "description": f"{name} radiologist"})
        assert r.status_code == 200 and name in r.text
    assert _add_source(lead, {"name": "resident", "kind": "human"}).status_code == 200
    bad = _add_source(lead, {"name": "<script>", "kind": "human"})
    assert bad.status_code == 400 and "<script>" not in bad.text.split('id="study-error"')[1][:200]

    # exam C: its expert segmentation arrives before the exam itself (kept, joins it later)
    c_expert = human_segmentation(c.folder, tmp_path / "c-expert.dcm", style="expert", reader="Expert^Reader")
    _storescu(stack, c_expert, SOURCES["expert"])
    eventually(lambda: view(stack, "SELECT status FROM segmentations WHERE study_instance_uid = %s", c.study_uid)
               == [{"status": "pending"}], 60, what="the early SEG kept as pending")
    assert "pending" in lead.get("/admin/study").text

    for study in (a, b):
        send(stack, study)
    rid = {a.accession: _result_id(stack, a), b.accession: _result_id(stack, b)}

    # exam A: both human segmentations by C-STORE from their tools
    for style in SOURCES:
        seg = human_segmentation(a.folder, tmp_path / f"a-{style}.dcm", style=style,  # type: ignore[arg-type]
                                 reader=f"{style.title()}^Reader")
        _storescu(stack, seg, SOURCES[style])
    # exam B: the expert's uploaded by the study lead, twice (idempotent); the novice's by C-STORE
    b_expert = human_segmentation(b.folder, tmp_path / "b-expert.dcm", style="expert", reader="Expert^Reader")
    first = _upload(lead, b_expert, "expert")
    assert first.status_code == 200 and "registered (valid)" in first.text, first.text[:500]
    again = _upload(lead, b_expert, "expert")
    assert again.status_code == 200 and "already registered" in again.text
    _storescu(stack, human_segmentation(b.folder, tmp_path / "b-novice.dcm", style="novice", reader="Novice^Reader"),
              SOURCES["novice"])
    eventually(lambda: len(view(stack, "SELECT 1 FROM segmentations WHERE status = 'valid'")) == 4, 90,
               what="four valid human segmentations")
    assert len(view(stack, "SELECT 1 FROM segmentations WHERE study_instance_uid = %s", b.study_uid)) == 2

    # bad input: each refused with its reason, nothing new in the store, nothing registered
    before = _store_files(stack)
    other_study = pydicom.dcmread(b_expert)
    other_study.StudyInstanceUID, other_study.SOPInstanceUID = a.study_uid, generate_uid()
    wrong_geometry = pydicom.dcmread(b_expert)
    wrong_geometry.SOPInstanceUID = generate_uid()
    wrong_geometry.Rows, wrong_geometry.Columns = 32, 32
    off_grid = pydicom.dcmread(b_expert)
    off_grid.SOPInstanceUID = generate_uid()
    frame = off_grid.PerFrameFunctionalGroupsSequence[0]
    del frame.DerivationImageSequence
    frame.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 12345.0]
    for ds, why in ((other_study, "another study"), (wrong_geometry, "source images are"),
                    (off_grid, "lies on no slice")):
        path = tmp_path / f"bad-{why.replace(' ', '-')}.dcm"
        ds.save_as(path)
        r = _upload(lead, path, "expert")
        assert r.status_code == 400 and why in html.unescape(r.text), (why, r.text[:800])
    r = _upload(lead, b"\x00" * 200, "expert")
    assert r.status_code == 400 and "not a readable DICOM" in r.text
    assert _store_files(stack) == before
    assert len(view(stack, "SELECT 1 FROM segmentations")) == 5  # 4 valid + C's pending
    # a SEG from a tool nobody registered: the SCP had stored it, so it is kept as refused, with why
    _storescu(stack, human_segmentation(a.folder, tmp_path / "a-stranger.dcm", style="novice", reader="X^Y"),
              "SEG-STRANGER")
    eventually(lambda: view(stack, "SELECT reason FROM segmentations WHERE status = 'refused'"), 60,
               what="the stranger's SEG refused")
    assert "SEG-STRANGER" in html.unescape(lead.get("/admin/study").text)

    # exam C arrives: the early segmentation joins it
    send(stack, c)
    rid[c.accession] = _result_id(stack, c)

    # three readers, each rating every segmentation of each exam; the source is nowhere in what they fetch
    truth_by_hash = {row["blinding_hash"]: row["source"]  # the test knows what the lead knows
                     for row in view(stack, "SELECT blinding_hash, source FROM blinding_map")}
    score = {"expert": 5, "novice": 3}
    orders: dict[str, list[list[str]]] = {}
    for reader_name in READERS:
        reader = Browser(stack.web_url, reader_name)
        for study in (a, b, c):
            case = rid[study.accession]
            page = reader.get(f"/results/{case}").text
            hashes = _segs_on_page(page)
            assert len(hashes) == (3 if study is not c else 2), (study.accession, hashes)
            assert hashes == _segs_on_page(reader.get(f"/results/{case}").text)  # stable on reload
            orders.setdefault(reader_name, []).append(hashes)
            assert reader.get(f"/results/{case}/overlay/5.png").status_code == 404  # the model's own overlay
            _assert_blind(_fetchable(reader, f"/results/{case}"), f"{reader_name} on {study.accession}")
            for h in hashes:
                source = truth_by_hash[h]
                rating = score.get(source, 4)
                r = reader.http.post(f"/results/{case}/segs/{h}/rating",
                                     data={"rating": str(rating), "comment": f"rated by {reader_name}",
                                           "csrf_token": csrf(page)})
                assert r.status_code == 200, r.text[:300]
            page = reader.get(f"/results/{case}").text
            assert page.count('class="own-rating"') == len(hashes)
            _assert_blind({"after rating": page.encode()}, study.accession)
        for path in ("/admin/study", "/admin/study/report.json?pipeline=liver", "/admin/blinding", "/admin/audit"):
            assert reader.get(path).status_code == 403, path
    # one reader in a real browser: the overlay chooser, and a rating changed through the form
    _in_chromium(stack, Browser(stack.web_url, "reader1"), rid[a.accession], orders["reader1"][0])
    # readers see only their own ratings (independent reads)
    r2 = Browser(stack.web_url, "reader2").get(f"/results/{rid[a.accession]}").text
    assert "rated by reader1" not in r2 and r2.count('class="own-rating"') == 3
    # random order per reader: every reader's order is a permutation, and the readers do not all share one
    assert len({tuple(tuple(o) for o in orders[r]) for r in READERS}) > 1 or len(READERS) == 1

    # the lead's unblinded report
    def rated() -> bool:
        return len(view(stack, "SELECT 1 FROM reviews WHERE rating IS NOT NULL")) == 3 * (3 + 3 + 2)

    eventually(rated, 60, what="every rating in PostgreSQL")
    report = _report(lead)
    assert report["cases"] == 3
    # the SEGs sent to radstream did not make the liver pipeline run again
    assert len(view(stack, "SELECT 1 FROM results WHERE pipeline = 'liver'")) == 3
    by_source = {s["source"]: s for s in report["sources"]}
    model = next(k for k in by_source if k.startswith("model:"))
    assert by_source["expert"]["segmentations"] == 3 and by_source["novice"]["segmentations"] == 2
    assert by_source[model]["segmentations"] == 3
    assert by_source["expert"]["ratings"] == 9 and by_source["expert"]["mean_rating"] == 5
    assert by_source["novice"]["ratings"] == 6 and by_source["novice"]["mean_rating"] == 3
    assert by_source[model]["ratings"] == 9 and by_source[model]["mean_rating"] == 4
    assert all(s["mean_review_time_s"] is not None and s["mean_review_time_s"] >= 0 for s in by_source.values())
    truth = {s.accession: s.truth["volumes_ml"] for s in exams}
    agreement = {(g["source_a"], g["source_b"], g["label"]): g for g in report["agreement"]}
    for label in ("liver right lobe", "liver left lobe", "hepatic vessels"):
        # the reference model is exact on the phantom, and so is the expert's tool
        assert agreement[("expert", model, label)]["mean_dice"] >= 0.99
    # every source's volumes come from its SEG by one method: masks that agree, volumes that agree
    for p in report["pairs"]:
        if (p["source_a"], p["source_b"]) == ("expert", model):
            assert abs(p["volume_diff_ml"]) <= 0.01 * p["volume_a_ml"] + 0.5, p
    assert 0.5 < agreement[("expert", "novice", "liver right lobe")]["mean_dice"] < 0.99
    assert agreement[("expert", "novice", "hepatic vessels")]["mean_dice"] == 0.0  # the novice left them out
    for p in report["pairs"]:
        if p["source_a"] == "expert" and p["volume_a_ml"] is not None:
            acc = next(s.accession for s in exams if rid[s.accession] == p["result_id"])
            assert p["volume_a_ml"] == pytest.approx(truth[acc][p["label"]], rel=0.01)
    lead_page = lead.get("/admin/study").text
    assert "report-agreement" in lead_page and "expert" in lead_page and model in html.unescape(lead_page)
