"""The review app in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

A real uvicorn server on a free port, the real PostgreSQL and Kafka, and the real feedback sink
(``SinkRunner`` with the feedback spec) in a thread: what the browser submits must land in
PostgreSQL through ``radstream.feedback``. Screenshots go to reports/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from radstream.consumers.sinks.feedback import feedback_spec
from radstream.consumers.sinks.runner import SinkRunner

from radstream.db.connect import connect
from radstream.devenv.process import free_port
from radstream.settings import Settings
from radstream.web import create_app
from tests.integration.web_seed import PASSWORD, Seeded, seed
from tests.waiting import eventually

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = os.environ.get("RADSTREAM_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "reports" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Server:
    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        eventually(lambda: self.server.started, timeout=30, what="uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class FeedbackSink:
    """The real feedback sink, consuming radstream.feedback in its own consumer group, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.runner = SinkRunner(settings, feedback_spec(settings))
        self.thread = threading.Thread(target=self.runner.run, name="feedback-sink", daemon=True)

    def __enter__(self) -> FeedbackSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()
        self.thread.join(30)


@pytest.fixture
def stack(pg_settings: Settings) -> Iterator[tuple[Settings, Seeded, str]]:
    seeded = seed(pg_settings)
    with FeedbackSink(pg_settings), Server(pg_settings) as server:
        yield pg_settings, seeded, server.url


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: scripts/bootstrap.sh installs Debian's chromium")
    profile = tempfile.mkdtemp(prefix="rs-chromium-")
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={"width": 1360, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, base: str, user: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#signin")
    page.wait_for_load_state()


def sign_out(page: Any) -> None:
    page.click("#signout")
    page.wait_for_url("**/login")


def image_loaded(page: Any, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "el => el.complete && el.naturalWidth > 0"))


def test_reader_reviews_brain_result_and_feedback_lands_in_postgres(stack: tuple[Settings, Seeded, str],
                                                                     browser: Any) -> None:
    settings, s, base = stack
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(f"{base}/worklist")
    assert "/login" in page.url
    shot(page, "01-login")
    sign_in(page, base, "reader1")
    assert page.url.endswith("/worklist")
    rows = page.locator("#worklist tbody tr")
    assert rows.count() >= 4
    text = page.inner_text("#worklist")
    for acc in s.brain_accessions:
        assert acc in text
    assert s.hip_accession not in text  # waits for QC
    # filters: pipeline and accession
    page.select_option("#f-pipeline", "brain-tumour")
    page.fill("#f-q", s.brain_accessions[2])
    page.click("#f-apply")
    page.wait_for_load_state()
    assert page.locator("#worklist tbody tr").count() == 1
    page.goto(f"{base}/worklist?pipeline=brain-tumour")
    shot(page, "02-worklist")

    # the newest brain exam: priors table, plot, change and progression
    page.click(f"text={s.brain_accessions[2]}")
    page.wait_for_selector("#priors-1")
    priors = page.locator("#priors-1 tbody tr")
    assert priors.count() == 3
    last = priors.nth(2).inner_text()
    base_v, last_v = s.brain_volumes[0], s.brain_volumes[2]
    assert f"{last_v:.2f}" in last and f"{last_v - base_v:+.2f}" in last
    assert f"{100 * (last_v - base_v) / base_v:+.1f}" in last
    assert page.locator("#trend-1 svg.plot circle.point").count() == 3
    assert "PROGRESSION" in page.inner_text("#progression")

    # slice slider and overlay opacity
    page.wait_for_function("() => document.getElementById('slice-img').complete")
    assert image_loaded(page, "#slice-img") and image_loaded(page, "#overlay-img")
    start = int(page.get_attribute("#slice", "value") or 0)
    before = page.get_attribute("#slice-img", "src")
    page.focus("#slice")
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    assert page.inner_text("#slice-no") == str(start - 3 + 1)
    after = page.get_attribute("#slice-img", "src")
    assert before != after and after is not None and after.endswith(f"/slices/{start - 3}.png")
    assert page.get_attribute("#overlay-img", "src").endswith(f"/overlay/{start - 3}.png")  # type: ignore[union-attr]
    page.wait_for_function("() => { const i = document.getElementById('slice-img');"
                           " return i.complete && i.naturalWidth > 0; }")
    page.fill("#opacity", "80")
    assert page.eval_on_selector("#overlay-img", "el => el.style.opacity") == "0.8"
    page.focus("#slice")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    shot(page, "03-brain-result")

    # feedback
    page.check("#f0-agree")
    page.fill("#f0-label", "lesion")
    n_findings = page.locator("#feedback-form tbody tr").count()
    page.check(f"#f{n_findings - 1}-disagree")  # the progression finding
    page.fill("#comment", "Browser test: lesion margin looks right.")
    page.click("#submit-feedback")
    page.wait_for_url("**/worklist")
    assert "Feedback sent" in page.inner_text("#flash")

    def stored() -> Any:
        with connect(settings) as conn:
            return conn.execute(
                """SELECT rv.reviewer, rv.comment, rv.time_spent_s, rv.pipeline,
                          array_agg(f.finding ORDER BY f.idx), array_agg(f.agree ORDER BY f.idx),
                          array_agg(f.reader_label ORDER BY f.idx)
                   FROM reviews rv JOIN review_findings f USING (review_id)
                   WHERE rv.result_id = %s GROUP BY rv.review_id""", (s.brain_results[2],)).fetchone()

    row = eventually(stored, timeout=60, what="the review in PostgreSQL")
    reviewer, comment, spent, pipeline, findings, agrees, labels = row
    assert (reviewer, pipeline) == ("reader1", "brain-tumour")
    assert comment == "Browser test: lesion margin looks right."
    assert spent > 0
    assert findings[0] == "volume/lesion" and agrees[0] is True and labels[0] == "lesion"
    assert findings[-1] == "progression" and agrees[-1] is False
    with connect(settings) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE username = 'reader1' AND target_id = %s ORDER BY id",
            (s.brain_results[2],)).fetchall()]
    assert actions == ["view_result", "feedback"]
    # the worklist shows it done for this reader
    page.goto(f"{base}/worklist?status=done")
    assert s.brain_accessions[2] in page.inner_text("#worklist")

    assert not errors, errors
    # a reader cannot reach QC or admin pages
    for path in ("/qc", f"/qc/{s.hip_result}", "/admin/users", "/admin/blinding", "/ops", "/report"):
        resp = page.goto(f"{base}{path}")
        assert resp is not None and resp.status == 403, path
        assert "403" in page.inner_text("h1")


def test_qc_approval_releases_case_to_readers(stack: tuple[Settings, Seeded, str], browser: Any) -> None:
    settings, s, base = stack
    page = browser.new_page()
    sign_in(page, base, "reader1")
    assert s.hip_accession not in page.inner_text("#worklist")
    sign_out(page)

    sign_in(page, base, "qc1")
    assert page.url.endswith("/qc")
    assert s.hip_accession in page.inner_text("#qc-queue")
    page.click(f"text={s.hip_accession}")
    page.wait_for_selector("#radiograph")
    assert page.locator("#radiograph g.det").count() == 2
    shot(page, "04-qc-hip")
    page.click("#approve")
    page.wait_for_url("**/qc")

    def decided() -> Any:
        with connect(settings) as conn:
            return conn.execute("SELECT decision, reviewer FROM qc_decisions WHERE result_id = %s",
                                (s.hip_result,)).fetchone()

    assert eventually(decided, timeout=60, what="the QC decision in PostgreSQL") == ("APPROVED", "qc1")
    sign_out(page)

    sign_in(page, base, "reader1")

    def visible() -> bool:
        page.goto(f"{base}/worklist?pipeline=hip-fracture")
        return s.hip_accession in page.inner_text("#worklist")

    eventually(visible, timeout=30, interval=0.5, what="the approved hip case on the reader's worklist")
    page.click(f"text={s.hip_accession}")
    page.wait_for_selector("#radiograph")
    labels = page.inner_text("#detections")
    assert "left hip" in labels and "fracture" in labels
    assert page.locator("#f0-label option").count() == 4  # -, normal, fracture, hardware
    shot(page, "05-hip-result")
    sign_out(page)

    # admin pages render (screenshots for the README)
    sign_in(page, base, "admin1")
    page.goto(f"{base}/ops")
    page.wait_for_selector("#pipelines")
    assert "hip-fracture" in page.inner_text("#pipelines")
    page.wait_for_function("() => document.getElementById('ops-updated').textContent.startsWith('updated')",
                           timeout=15000)
    shot(page, "06-operations")
    page.goto(f"{base}/report")
    assert page.locator("svg.plot").count() == 4
    shot(page, "07-report")
    with page.expect_download() as dl:
        page.click("#csv")
    path = dl.value.path()
    assert path is not None and Path(path).read_text().startswith("pipeline,")
    page.goto(f"{base}/admin/blinding")
    assert s.liver_hash in page.inner_text("#blinding-map")
