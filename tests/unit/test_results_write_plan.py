"""The results writer's plan (what the direct path COPYs), worked out on the sink's consumer thread."""

from __future__ import annotations

import pytest

from radstream.db.results_writer import ResultRows
from radstream.events.models import Measurement
from tests.integration.sink_events import completed, requested, uid

pytestmark = pytest.mark.unit


def test_plan_has_one_row_per_key_in_key_order_and_the_winning_events_rows() -> None:
    rows = ResultRows()
    first = completed("p1", uid("s", 2), volume_ml=1.0)
    newer = completed("p1", uid("s", 2), volume_ml=2.0, run_s=5.0,
                      extra_measurements=[Measurement("volume", "oedema", 3.0, "mL")])
    newer.result_id = first.result_id
    for e in (requested("p1", uid("s", 2)), first, completed("p0", uid("s", 1)), newer, requested("p1", uid("s", 2))):
        rows.add(e)
    plan = rows.seal()
    assert rows.seal() is plan  # worked out once
    for ordered in plan.ordered:
        keys = [r[0] for r in ordered]
        assert keys == sorted(set(keys))
    assert [p[0] for p in plan.ordered[0]] == ["p0", "p1"]
    # the newer event of the same result wins, with its measurements only
    by_result = {m[0]: [] for m in plan.measurements}
    for m in plan.measurements:
        by_result[m[0]].append((m[2], m[3]))
    assert sorted(by_result[first.result_id]) == [("oedema", 3.0), ("tumour", 2.0)]


def test_adding_rows_after_sealing_works_the_plan_out_again() -> None:
    rows = ResultRows()
    rows.add(completed("p0", uid("s", 1)))
    assert len(rows.seal().ordered[4]) == 1
    rows.add(completed("p1", uid("s", 2)))  # a top-up poll after the plan was made
    assert len(rows.seal().ordered[4]) == 2
    assert [p[0] for p in rows.seal().ordered[0]] == ["p0", "p1"]
