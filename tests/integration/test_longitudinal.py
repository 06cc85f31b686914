"""Longitudinal change through the real sink: out-of-order timepoints give the right baseline and changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from radstream.consumers.sinks import results_spec

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.events.models import Measurement
from radstream.settings import Settings
from tests.integration.sink_events import T0, completed, uid
from tests.integration.sink_harness import running_sink, scalar, send_all
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _rows(settings: Settings, patient: str, pipeline: str = "brain-tumour",
          measurement: str = "volume") -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with connect(settings, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM v_longitudinal WHERE patient_key = %s AND pipeline = %s AND measurement = %s"
            " ORDER BY timepoint", (patient, pipeline, measurement))
        return list(cur.fetchall())


def test_out_of_order_timepoints(pg_settings: Settings) -> None:
    migrate(pg_settings)
    topic = pg_settings.topic("results")
    pa = "patient-a"
    dates = {"jan": "20240105", "mar": "20240307", "may": "20240502", "jul": "20240711"}
    vols = {"jan": 10.0, "mar": 11.0, "may": 14.0, "jul": 9.0}
    ev = {k: completed(pa, uid(pa, k), volume_ml=vols[k], study_date=dates[k],
                       # arrival times deliberately unrelated to study dates
                       last_received_at=T0 + timedelta(minutes=i))
          for i, k in enumerate(["jul", "may", "mar", "jan"])}
    with running_sink(pg_settings, results_spec(pg_settings)):
        send_all(pg_settings, topic, [ev["jul"], ev["may"]])
        eventually(lambda: len(_rows(pg_settings, pa)) == 2, 60, what="first two timepoints")
        first = _rows(pg_settings, pa)
        assert [r["volume_ml"] for r in first] == [14.0, 9.0]
        assert first[1]["baseline_ml"] == 14.0 and first[1]["change_from_baseline_ml"] == pytest.approx(-5.0)

        # the priors arrive later (e.g. a prior fetched from PACS and processed after the newer exam)
        send_all(pg_settings, topic, [ev["mar"], ev["jan"]])
        eventually(lambda: len(_rows(pg_settings, pa)) == 4, 60, what="all four timepoints")
    rows = _rows(pg_settings, pa)
    assert [r["study_instance_uid"] for r in rows] == [uid(pa, k) for k in ("jan", "mar", "may", "jul")]
    assert [r["timepoint"] for r in rows] == [1, 2, 3, 4]
    assert all(r["baseline_study_instance_uid"] == uid(pa, "jan") for r in rows)
    jan, mar, may, jul = rows
    assert jan["change_from_baseline_ml"] is None and jan["prior_ml"] is None and jan["progression"] is False
    assert mar["change_from_baseline_ml"] == pytest.approx(1.0)
    assert mar["change_from_baseline_pct"] == pytest.approx(10.0)
    assert mar["change_from_prior_pct"] == pytest.approx(10.0)
    assert mar["progression"] is False
    assert may["prior_study_instance_uid"] == uid(pa, "mar")
    assert may["change_from_baseline_ml"] == pytest.approx(4.0)
    assert may["change_from_baseline_pct"] == pytest.approx(40.0)
    assert may["change_from_prior_ml"] == pytest.approx(3.0)
    assert may["change_from_prior_pct"] == pytest.approx(300.0 / 11.0)
    assert may["progression"] is True  # +40% > 25%
    assert jul["prior_ml"] == 14.0
    assert jul["change_from_prior_ml"] == pytest.approx(-5.0)
    assert jul["change_from_prior_pct"] == pytest.approx(-500.0 / 14.0)
    assert jul["change_from_baseline_pct"] == pytest.approx(-10.0)
    assert jul["progression"] is False and jul["is_latest"] is True
    latest = scalar(pg_settings, "SELECT study_instance_uid FROM v_longitudinal_latest WHERE patient_key = %s", pa)
    assert latest == uid(pa, "jul")


def test_order_without_study_dates_shadow_and_reruns(pg_settings: Settings) -> None:
    migrate(pg_settings)
    topic = pg_settings.topic("results")
    pb = "patient-b"
    first = completed(pb, uid(pb, 1), volume_ml=20.0, last_received_at=T0)
    second = completed(pb, uid(pb, 2), volume_ml=30.0, last_received_at=T0 + timedelta(days=90))
    shadow = completed(pb, uid(pb, 2), volume_ml=99.0, last_received_at=T0 + timedelta(days=90), shadow=True)
    rerun = completed(pb, uid(pb, 1), volume_ml=24.0, last_received_at=T0, model_version="2")
    rerun.occurred_at = first.occurred_at + timedelta(hours=1)
    liver = completed(pb, uid(pb, "ct"), pipeline="liver", volume_ml=1500.0,
                      extra_measurements=[Measurement("volume", "left-lobe", 500.0, "mL")])
    with running_sink(pg_settings, results_spec(pg_settings)):
        send_all(pg_settings, topic, [second, shadow, first, liver])
        eventually(lambda: scalar(pg_settings, "SELECT count(*) FROM results") == 4, 60, what="results")
        rows = _rows(pg_settings, pb)
        assert [r["volume_ml"] for r in rows] == [20.0, 30.0]  # arrival order; shadow left out
        assert rows[1]["change_from_baseline_pct"] == pytest.approx(50.0) and rows[1]["progression"] is True
        send_all(pg_settings, topic, [rerun])
        eventually(lambda: _rows(pg_settings, pb)[0]["volume_ml"] == 24.0, 60, what="the re-run to replace")
    rows = _rows(pg_settings, pb)
    assert [r["model_version"] for r in rows] == ["2", "1"]
    assert rows[1]["change_from_baseline_pct"] == pytest.approx(25.0)
    assert rows[1]["progression"] is False  # exactly 25% is not "passes the threshold"
    liver_rows = _rows(pg_settings, pb, pipeline="liver")
    assert sorted(r["label"] for r in liver_rows) == ["left-lobe", "tumour"]
    assert all(r["progression"] is None for r in liver_rows)  # no threshold for liver
