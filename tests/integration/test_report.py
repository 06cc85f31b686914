"""Validation-study figures from the database, checked against data with known timings."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radstream.db.connect import connect
from radstream.db.feedback_writer import FeedbackRows, write_feedback_rows
from radstream.db.migrate import migrate
from radstream.db.results_writer import ResultRows, write_result_rows
from radstream.report.figures import pipeline_report
from radstream.settings import Settings
from tests.integration.sink_events import T0, completed, failed, requested, review, uid

pytestmark = [pytest.mark.postgres]


def test_report_figures(pg_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = pg_settings
    migrate(s)
    rows = ResultRows()
    done = []
    for i in range(10):
        study = uid("rep", i)
        rows.add(requested(f"p{i}", study, last_received_at=T0 + timedelta(hours=i)))
        if i < 8:
            c = completed(f"p{i}", study, last_received_at=T0 + timedelta(hours=i), run_s=float(i + 1))
            rows.add(c)
            done.append(c)
        elif i == 8:
            rows.add(failed(f"p{i}", study, last_received_at=T0 + timedelta(hours=i)))
        # i == 9: received, still pending
    rows.add(completed("px", uid("rep", "shadow"), shadow=True))  # shadow runs are left out
    fb = FeedbackRows()
    fb.add(review(done[0].result_id, done[0].study_instance_uid, agree=[True, True, False], time_spent_s=30))
    fb.add(review(done[1].result_id, done[1].study_instance_uid, agree=[True, None], time_spent_s=90))
    with connect(s, autocommit=True) as conn:
        write_result_rows(conn, rows)
        write_feedback_rows(conn, fb)
        # store times known exactly: turnaround = 60 s + 10 s * i
        for i, c in enumerate(done):
            conn.execute("UPDATE results SET stored_at = last_received_at + make_interval(secs => %s)"
                         " WHERE result_id = %s", (60 + 10 * i, c.result_id))
        r = pipeline_report(conn, "brain-tumour")
    assert (r.exams_received, r.exams_processed, r.exams_failed, r.exams_pending) == (10, 8, 1, 1)
    turnarounds = [60 + 10 * i for i in range(8)]
    assert r.turnaround_s_mean == pytest.approx(sum(turnarounds) / 8)
    assert r.turnaround_s_p50 == pytest.approx(95.0)  # percentile_cont over 60..130
    assert r.turnaround_s_p90 == pytest.approx(60 + 0.9 * 70)
    assert r.run_time_s_mean == pytest.approx(4.5) and r.run_time_s_p50 == pytest.approx(4.5)
    assert r.reviews_done == 2 and r.results_reviewed == 2
    assert r.review_time_s_mean == pytest.approx(60.0)
    assert r.findings_judged == 4 and r.agreement_pct == pytest.approx(75.0)

    from radstream.cli.context import set_config
    from radstream.cli.main import app

    monkeypatch.setenv("RADSTREAM_POSTGRES__HOST", s.postgres.host)
    monkeypatch.setenv("RADSTREAM_POSTGRES__PORT", str(s.postgres.port))
    monkeypatch.setenv("RADSTREAM_POSTGRES__USER", s.postgres.user)
    monkeypatch.setenv("RADSTREAM_POSTGRES__PASSWORD", str(s.postgres.password.get_secret_value()
                                                        if hasattr(s.postgres.password, "get_secret_value")
                                                        else s.postgres.password))
    monkeypatch.setenv("RADSTREAM_POSTGRES__DATABASE", s.postgres.database)
    set_config(None)
    out = tmp_path / "report.csv"
    result = CliRunner().invoke(app, ["report", "--pipeline", "brain-tumour", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert "exams received   10" in result.output and "75.0% of 4 findings" in result.output
    with out.open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["pipeline"] == "brain-tumour" and row["exams_failed"] == "1" and row["exams_pending"] == "1"
    assert float(row["turnaround_s_p90"]) == pytest.approx(123.0)
