# ruff: noqa: F811  (pytest fixtures imported from the support modules)
"""Replay on real components, to the end: 20 past liver studies have v1 results (live worker and
results sink); `radstream replay --model-version 2` plans and emits them; the replay worker (v2,
a second real Triton) and the sink turn them into 20 v2 results, kept apart by model version and
replay id, off the readers' worklists. Meanwhile the live group's offsets are untouched by the
replay and live traffic keeps flowing through the live worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from radstream.consumers.inference.worker import InferenceWorker, group_id
from radstream.consumers.sinks import results_spec

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.events.models import InferenceCompleted
from radstream.kafka.producer import EventProducer
from radstream.ops import replay as rp
from radstream.ops.compare import compare
from radstream.ops.workers import replay_worker
from radstream.settings import Settings
from radstream.web.queries import WorklistFilter, worklist
from tests.integration.infer_support import triton_server, with_triton  # noqa: F401
from tests.integration.ops_support import Results, Running, liver_requests, offsets_on, triton_server_v2  # noqa: F401
from tests.integration.sink_harness import running_sink
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]



def _count(s: Settings, where: str) -> int:
    with connect(s) as conn:
        row = conn.execute(f"SELECT count(*) FROM results WHERE pipeline = 'liver' AND {where}").fetchone()
    return int(row[0]) if row else 0


def test_replay_20_past_studies_into_v2(pg_settings: Settings, triton_server: object, triton_server_v2: object,
                                        tmp_path: Path) -> None:
    migrate(pg_settings)
    s = with_triton(pg_settings, triton_server)
    s2 = with_triton(pg_settings, triton_server_v2)
    past = liver_requests(s, tmp_path / "past", patients=20, seed=41)
    fresh = liver_requests(s, tmp_path / "fresh", patients=2, seed=42)
    assert not {r.study_instance_uid for r in past} & {r.study_instance_uid for r in fresh}
    producer = EventProducer(s, "test-dispatcher")
    results = Results(s)
    topic = s.topic("requests.liver")
    try:
        with running_sink(s, results_spec(s)), Running(InferenceWorker(s, "liver"), "live"):
            for r in past:
                producer.send_sync(topic, r.patient_key, r)
            live = group_id(s, "liver")
            eventually(lambda: _count(s, "model_version = '1' AND status = 'completed'") == 20, timeout=300,
                       what="20 v1 results stored")
            eventually(lambda: sum(offsets_on(s, live, topic).values()) == 20, timeout=30, what="live commits")
            before = offsets_on(s, live, topic)

            cp = rp.run(s, rp.start(s, "liver", rp.Selection(), model_version="2"))
            assert cp.done and cp.emitted == 20 and cp.read == 20
            assert offsets_on(s, live, topic) == before  # planning and emitting the replay moved nothing live

            with Running(replay_worker(s2, "liver"), "replay"):
                for r in fresh:  # live traffic during the replay
                    producer.send_sync(topic, r.patient_key, r)
                eventually(lambda: _count(s, f"model_version = '2' AND replay_id = '{cp.replay_id}'") == 20,
                           timeout=300, what="20 v2 results stored")
                eventually(lambda: _count(s, "model_version = '1' AND replay_id IS NULL") == 22, timeout=120,
                           what="the live results of the fresh studies")
            after = offsets_on(s, live, topic)
            events = results.until(lambda evs: len(evs) >= 42, 60, "42 results on the topic")
            events = results.settle(2.0)
    finally:
        results.close()
        producer.flush()

    # the live group moved by exactly the fresh live requests, never by the replay
    assert sum(after.values()) - sum(before.values()) == len(fresh)
    assert set(after) == set(before)

    replayed = [e for e in events if e.replay_id == cp.replay_id]
    assert len(replayed) == 20 and all(isinstance(e, InferenceCompleted) for e in replayed)
    assert {e.model_version for e in replayed} == {"2"} and all(e.shadow for e in replayed)
    assert {e.study_instance_uid for e in replayed} == {r.study_instance_uid for r in past}
    live = [e for e in events if e.replay_id is None]
    assert len(live) == 22 and {e.model_version for e in live} == {"1"} and not any(e.shadow for e in live)

    with connect(s) as conn:
        rows = worklist(conn, "reader1", WorklistFilter(pipeline="liver"), readers_only=True)
    assert len(rows) == 22 and {r["model_version"] for r in rows} == {"1"}  # replays stay off the worklists

    # `radstream compare --versions 1 2`: the same reference model, so the same volumes on all 20
    c = compare(s, "liver", "1", "2")
    assert (c.studies_a, c.studies_b, c.common) == (22, 20, 20)
    assert c.volumes and all(v.pairs == 20 and v.mean_abs_diff < 1e-6 for v in c.volumes)
