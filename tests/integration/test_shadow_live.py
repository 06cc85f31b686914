# ruff: noqa: F811  (pytest fixtures imported from the support modules)
"""Shadow model on the live stream: every live study gets the live (v1) and the shadow (v2) result;
the readers' worklist shows only the live one. Real broker, two real Triton servers (v1, v2),
the results sink into PostgreSQL, the reader's worklist query of the web app."""

from __future__ import annotations

from pathlib import Path

import pytest
from radstream.consumers.inference.worker import InferenceWorker, group_id
from radstream.consumers.sinks import results_spec

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.events.models import InferenceCompleted
from radstream.kafka.producer import EventProducer
from radstream.ops.workers import shadow_group, shadow_worker
from radstream.settings import Settings
from radstream.web.queries import WorklistFilter, worklist
from tests.integration.infer_support import triton_server, with_triton  # noqa: F401
from tests.integration.ops_support import Results, Running, liver_requests, offsets_on, triton_server_v2  # noqa: F401
from tests.integration.sink_harness import running_sink
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def test_shadow_results_are_produced_and_hidden_from_readers(
        pg_settings: Settings, triton_server: object, triton_server_v2: object, tmp_path: Path) -> None:
    migrate(pg_settings)
    live_s = with_triton(pg_settings, triton_server)
    shadow_s = with_triton(pg_settings, triton_server_v2)
    reqs = liver_requests(live_s, tmp_path / "synth", patients=3)
    producer = EventProducer(live_s, "test-dispatcher")
    results = Results(live_s)
    try:
        with running_sink(live_s, results_spec(live_s)), \
                Running(InferenceWorker(live_s, "liver"), "live"), \
                Running(shadow_worker(shadow_s, "liver", "2"), "shadow"):
            for r in reqs:
                producer.send_sync(live_s.topic("requests.liver"), r.patient_key, r)
            events = results.until(lambda evs: len(evs) >= 2 * len(reqs), 240, "live and shadow results")
            events = results.settle(2.0)

            def stored() -> int:
                with connect(live_s) as conn:
                    row = conn.execute("SELECT count(*) FROM results").fetchone()
                return int(row[0]) if row else 0

            eventually(lambda: stored() == 2 * len(reqs), timeout=60, what="both results of each study stored")
    finally:
        results.close()
        producer.flush()

    assert len(events) == 2 * len(reqs)
    assert all(isinstance(e, InferenceCompleted) for e in events), events
    live = {e.study_instance_uid: e for e in events if not e.shadow}
    shadow = {e.study_instance_uid: e for e in events if e.shadow}
    studies = {r.study_instance_uid for r in reqs}
    assert set(live) == set(shadow) == studies
    for uid in studies:
        a, b = live[uid], shadow[uid]
        assert (a.model_version, b.model_version) == ("1", "2")
        assert a.result_id != b.result_id and b.request_id.endswith(":shadow:v2")
        # the same reference model in both versions: the same volumes
        assert {m.label: m.value for m in a.measurements} == pytest.approx({m.label: m.value for m in b.measurements})

    with connect(live_s) as conn:
        rows = worklist(conn, "reader1", WorklistFilter(pipeline="liver"), readers_only=True)
        everything = worklist(conn, "qc1", WorklistFilter(pipeline="liver"), readers_only=False)
        kinds = conn.execute("SELECT shadow, model_version, count(*) FROM results GROUP BY 1, 2 ORDER BY 1").fetchall()
    assert {r["result_id"] for r in rows} == {e.result_id for e in live.values()}
    assert {r["result_id"] for r in everything} == {e.result_id for e in live.values()}  # not even for QC
    assert all(r["model_version"] == "1" for r in rows)
    assert kinds == [(False, "1", 3), (True, "2", 3)]

    # the shadow ran in its own consumer group: the live group's offsets are its own
    topic = live_s.topic("requests.liver")
    assert sum(offsets_on(live_s, group_id(live_s, "liver"), topic).values()) == len(reqs)
    assert sum(offsets_on(live_s, shadow_group(live_s, "liver", "2"), topic).values()) == len(reqs)
