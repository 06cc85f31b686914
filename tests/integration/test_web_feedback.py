"""Feedback with a corrected DICOM SEG: its volume is recalculated, sent in ReviewSubmitted, stored by the sink."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from radstream.consumers.sinks.feedback import feedback_spec
from radstream.consumers.sinks.runner import SinkRunner
from starlette.testclient import TestClient

from radstream.db.connect import connect
from radstream.settings import Settings
from radstream.store import path_for_uri
from radstream.web import create_app
from tests.integration.web_seed import PASSWORD, corrected_seg_bytes, seed
from tests.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _sign_in(client: TestClient, user: str) -> None:
    token = CSRF.search(client.get("/login").text).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"username": user, "password": PASSWORD, "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303


def test_corrected_seg_volume_recalculated_and_stored(pg_settings: Settings) -> None:
    s = seed(pg_settings)
    result_id = s.brain_results[2]
    seg, expected_ml = corrected_seg_bytes(pg_settings, scale_radius=10.0)
    with TestClient(create_app(pg_settings), base_url="http://127.0.0.1") as client:
        _sign_in(client, "reader2")
        page = client.get(f"/results/{result_id}")
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        r = client.post(f"/results/{result_id}/feedback",
                        data={"csrf_token": token, "f0_agree": "disagree", "comment": "edited the margin"},
                        files={"seg_file": ("corrected.dcm", seg, "application/dicom")})
        assert r.status_code == 200 and "Corrected segmentation" in r.text, r.text[r.text.find("error-detail"):][:300]
        assert f"{expected_ml:.2f} mL" in r.text and f"model {s.brain_volumes[2]:.2f} mL" in r.text
        # a file that is not a SEG is refused, sends nothing and leaves nothing in the store
        before = sorted(p for p in pg_settings.store_root.rglob("*") if p.is_file())
        r = client.post(f"/results/{result_id}/feedback", data={"csrf_token": token},
                        files={"seg_file": ("x.dcm", b"not dicom at all", "application/dicom")})
        assert r.status_code == 400
        assert sorted(p for p in pg_settings.store_root.rglob("*") if p.is_file()) == before
    runner = SinkRunner(pg_settings, feedback_spec(pg_settings))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()

    def stored() -> Any:
        with connect(pg_settings) as conn:
            return conn.execute("""SELECT reviewer, corrected_volume_ml, corrected_seg_uri, comment FROM reviews
                                   WHERE result_id = %s""", (result_id,)).fetchone()

    try:
        row = eventually(stored, timeout=60, what="the review in PostgreSQL")
    finally:
        runner.stop()
        thread.join(30)
    assert runner.stats.events == 1  # the refused upload sent nothing
    reviewer, volume, uri, comment = row
    assert reviewer == "reader2" and comment == "edited the margin"
    assert volume == pytest.approx(expected_ml, abs=1e-3)
    assert path_for_uri(uri, pg_settings.store_root).read_bytes() == seg
    with TestClient(create_app(pg_settings), base_url="http://127.0.0.1") as client:
        _sign_in(client, "reader2")
        page = client.get(f"/results/{result_id}").text
        corrected = re.search(r'<td class="corrected">([^<]+)</td>', page)
        assert corrected and corrected.group(1) == f"{expected_ml:.2f}"

        # independent reads: another reader sees neither reader2's review nor their corrected volume
        client.cookies.clear()
        _sign_in(client, "reader1")
        other = client.get(f"/results/{result_id}").text
        assert 'id="reviews"' not in other and "reader2" not in other and f"{expected_ml:.2f}" not in other
        client.cookies.clear()
        _sign_in(client, "admin1")
        admin = client.get(f"/results/{result_id}").text
        assert 'id="reviews"' in admin and "reader2" in admin and "by reader2" in admin
