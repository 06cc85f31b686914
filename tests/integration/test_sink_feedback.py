"""The feedback sink on the real broker and database: reviews and QC decisions land once each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from radstream.consumers.sinks import feedback_spec, results_spec

from radstream.db.migrate import migrate
from radstream.events.models import QcDecision
from radstream.settings import Settings
from tests.integration.sink_events import completed, qc, review, uid
from tests.integration.sink_harness import running_sink, scalar, send_all
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_feedback_lands_once_when_delivered_twice(pg_settings: Settings) -> None:
    migrate(pg_settings)
    s = pg_settings
    hip = completed("ph", uid("hip", 1), pipeline="hip-fracture")
    brain = completed("pb", uid("brain", 1))
    reviews = [review(brain.result_id, brain.study_instance_uid, reviewer=f"r{i}", agree=[True, False, None],
                      time_spent_s=10.0 * (i + 1)) for i in range(5)]
    decision = qc(hip.result_id, hip.study_instance_uid, QcDecision.APPROVED)
    with running_sink(s, results_spec(s)) as results_runner:
        send_all(s, s.topic("results"), [hip, brain])
        eventually(lambda: results_runner.stats.events >= 2, 60, what="results")
    assert scalar(s, "SELECT qc_status FROM v_worklist WHERE result_id = %s", hip.result_id) == "pending"
    assert scalar(s, "SELECT visible_to_readers FROM v_worklist WHERE result_id = %s", hip.result_id) is False
    with running_sink(s, feedback_spec(s)) as runner:
        send_all(s, s.topic("feedback"), [*reviews, decision], key="k")
        send_all(s, s.topic("feedback"), [decision, *reviews[::-1]], key="k")
        eventually(lambda: runner.stats.events >= 12, 60, what="all feedback deliveries")
    assert scalar(s, "SELECT count(*) FROM reviews") == 5
    assert scalar(s, "SELECT count(*) FROM review_findings") == 15
    assert scalar(s, "SELECT count(*) FROM qc_decisions") == 1
    assert scalar(s, "SELECT sum(time_spent_s) FROM reviews") == 150.0
    assert scalar(s, "SELECT visible_to_readers FROM v_worklist WHERE result_id = %s", hip.result_id) is True
    assert scalar(s, "SELECT status FROM v_worklist WHERE result_id = %s", brain.result_id) == "done"

    # an amended review (same review_id, newer event) replaces the first and its findings;
    # the older event delivered again afterwards changes nothing
    amended = review(brain.result_id, brain.study_instance_uid, reviewer="r0", agree=[False],
                     review_id=reviews[0].review_id, comment="changed my mind")
    amended.occurred_at = reviews[0].occurred_at + timedelta(minutes=5)
    with running_sink(s, feedback_spec(s)) as runner:
        send_all(s, s.topic("feedback"), [amended, reviews[0]], key="k")
        eventually(lambda: runner.stats.events >= 2, 60, what="amendment")
    rid = reviews[0].review_id
    assert scalar(s, "SELECT comment FROM reviews WHERE review_id = %s", rid) == "changed my mind"
    assert scalar(s, "SELECT count(*) FROM review_findings WHERE review_id = %s", rid) == 1
    assert scalar(s, "SELECT agree FROM review_findings WHERE review_id = %s", rid) is False
    assert scalar(s, "SELECT count(*) FROM reviews") == 5
