# ruff: noqa: F811  (pytest fixtures imported from the support modules)
"""Scaling per model: 3 `radstream infer --pipeline liver` processes share the pipeline's group;
one is killed (SIGKILL) mid-stream; every request still ends in exactly one result.

On the topic a request whose result was acknowledged but whose offset the killed worker had not
committed yet is redelivered and answered again with the same result id (at-least-once); the
results sink makes that one row, so PostgreSQL holds exactly one result per request.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from radstream.consumers.inference.worker import group_id
from radstream.consumers.sinks import results_spec

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.events.models import InferenceCompleted
from radstream.kafka.producer import EventProducer
from radstream.ops.status import group_status
from radstream.settings import Settings
from tests.integration.infer_support import triton_server, with_triton  # noqa: F401
from tests.integration.observability_support import child_env, start, stop
from tests.integration.ops_support import Results, by_request, liver_requests, offsets_on
from tests.integration.sink_harness import running_sink
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]



def test_three_workers_one_killed_every_request_one_result(
        pg_settings: Settings, triton_server: object, tmp_path: Path) -> None:
    s = with_triton(pg_settings, triton_server)
    migrate(s)
    reqs = liver_requests(s, tmp_path / "synth", patients=12, seed=31)
    env = child_env(s, {"infer": 0})
    logs = [tmp_path / f"infer-{i}.log" for i in range(3)]
    # each process under its own client id, so the group's members can be told apart
    workers = [start(["infer", "--pipeline", "liver"],
                     {**env, "RADSTREAM_KAFKA__CLIENT_EXTRA": f'{{"client.id": "infer-{i}"}}'}, log)
               for i, log in enumerate(logs)]
    results = Results(s)
    producer = EventProducer(s, "test-dispatcher")
    try:
        def members() -> int:
            try:
                g = group_status(s, [group_id(s, "liver")])
            except KafkaException:  # the group does not exist yet
                return 0
            return len(g[0].members) if g and g[0].state.lower() == "stable" else 0

        eventually(lambda: members() == 3, timeout=90, what="3 members in the liver group")
        parts = {p for m in group_status(s, [group_id(s, "liver")])[0].members for p in m.partitions}
        assert len(parts) == 3  # one partition each: all three share the work

        with running_sink(s, results_spec(s)):
            for r in reqs:
                producer.send_sync(s.topic("requests.liver"), r.patient_key, r)
            results.until(lambda evs: len(evs) >= 1, 180, "the first result")
            gs = group_status(s, [group_id(s, "liver")])[0]
            owners = {m.client_id: m.partitions for m in gs.members}
            # the victim is a worker that still has requests in hand (its partitions' lag), whichever
            # one that is: the keys may have given some worker few requests, all answered by now
            lag = {m.client_id: sum(p.lag for p in gs.partitions if (p.topic, p.partition) in m.partitions)
                   for m in gs.members}
            victim_id = max(lag, key=lambda c: lag[c])
            assert lag[victim_id] > 0, lag
            victim = workers[int(victim_id.rsplit("-", 1)[1])]
            at_kill = offsets_on(s, group_id(s, "liver"), s.topic("requests.liver"))
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
            done = results.until(lambda evs: {e.request_id for e in evs} >= {r.request_id for r in reqs}, 300,
                                 "a result for every request after the kill")
            done = results.settle(3.0)

            def stored() -> int:
                with connect(s) as conn:
                    row = conn.execute("SELECT count(*) FROM results WHERE pipeline = 'liver'").fetchone()
                return int(row[0]) if row else 0

            eventually(lambda: stored() == len(reqs), timeout=60, what="one stored result per request")
        assert sum(offsets_on(s, group_id(s, "liver"), s.topic("requests.liver")).values()) == len(reqs)
        eventually(lambda: members() == 2, timeout=60, what="the killed member gone from the group")
        gs = group_status(s, [group_id(s, "liver")])[0]
        assert set(owners) - {m.client_id for m in gs.members} == {victim_id}
        ends = {(p.topic, p.partition): p.end for p in gs.partitions}
        taken_over = sum(ends[tp] - at_kill.get(tp, 0) for tp in owners[victim_id])
        assert taken_over > 0  # the killed worker still had requests: the survivors answered them
        assert [stop(w) for w in workers if w is not victim] == [0, 0], [log.read_text()[-2000:] for log in logs]
    finally:
        results.close()
        for w in workers:
            if w.poll() is None:
                w.kill()

    per = by_request(list(done))
    assert set(per) == {r.request_id for r in reqs}
    for rid, evs in per.items():
        assert all(isinstance(e, InferenceCompleted) for e in evs), evs
        assert len({e.result_id for e in evs}) == 1, rid  # a redelivery answers with the same result id
    with connect(s) as conn:
        rows = conn.execute("SELECT request_id, count(*) FROM results GROUP BY 1").fetchall()
    assert dict(rows) == {r.request_id: 1 for r in reqs}
    redelivered = sum(len(v) - 1 for v in per.values())
    print(f"\n{len(reqs)} requests, 3 workers, 1 killed with {taken_over} of its requests unanswered or "
          f"uncommitted: {redelivered} redelivered result(s) on the topic, "
          f"{len(rows)} rows in PostgreSQL")
