"""Faults under load, on the real processes: kill -9 and restart of the SCP, the aggregator, an
inference worker and the results sink; Kafka broker restart; PostgreSQL restart; Triton restart.

One private stack (its own Kafka, PostgreSQL, Triton and every radstream process on free
ports) runs for the module; each fault gets its own small load and the counts of
:mod:`tests.integration.fault_support` (every acknowledged instance on the topic and in the
store, every study completed, one result per study, no duplicate rows).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from radstream.bench.stack import BenchStack, StackConfig
from radstream.bench.workload import Exam
from tests.integration.fault_support import STREAM_S, Action, fault_exams, fault_under_load

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom,
              pytest.mark.timeout(900)]

# Longer than any outage below, as production's 60 s are: while the SCP restarts, or while the
# broker is down and the SCP holds instances in its outbox, the aggregator cannot see them; a
# quiet period shorter than the outage closes a partial series, and its late instances then make
# a second revision (a legitimate second result, seen in CI with 5 s and a Kafka restart).
SERIES_QUIET_S = 10.0
PATIENT_QUIET_S = 12.0

# fault name -> (when it lands, seconds after the phase's first instance; what it does)


def _kill_restart(name: str, down_s: float = 1.0) -> Action:
    def act(stack: BenchStack) -> None:
        stack.kill9(name)
        time.sleep(down_s)
        stack.restart(name)
    return act


AFTER_SEND = STREAM_S + PATIENT_QUIET_S + 0.3  # the study has completed: requests/results are in flight
FAULTS: list[tuple[str, float, Action]] = [
    ("kill -9 ingest (SCP)", 1.5, _kill_restart("ingest")),
    ("kill -9 aggregate", 2.0, _kill_restart("aggregate")),
    ("kill -9 infer-hip-fracture", AFTER_SEND, _kill_restart("infer-hip-fracture")),
    ("kill -9 sink-results", STREAM_S + SERIES_QUIET_S, _kill_restart("sink-results")),
    ("Kafka broker restart", 2.0, lambda s: s.restart_kafka(down_s=2.0)),
    ("PostgreSQL restart", STREAM_S + SERIES_QUIET_S, lambda s: s.restart_postgres(down_s=2.0)),
    ("Triton restart", STREAM_S + SERIES_QUIET_S - 0.5, lambda s: s.restart_triton(down_s=1.0)),
]


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Exam]]:
    return fault_exams(tmp_path_factory.mktemp("fault-synth"), len(FAULTS), seed=4242)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    st = BenchStack(tmp_path_factory.mktemp("fault-stack"),
                    StackConfig(series_quiet_s=SERIES_QUIET_S, patient_quiet_s=PATIENT_QUIET_S,
                                topic_prefix="faults"))
    try:
        st.up()
        yield st
    finally:
        st.down()


@pytest.mark.parametrize("index", range(len(FAULTS)), ids=[f[0] for f in FAULTS])
def test_fault_under_load_loses_nothing_and_duplicates_nothing(
    stack: BenchStack, exams: dict[str, list[Exam]], index: int
) -> None:
    name, at_s, action = FAULTS[index]
    fault_under_load(stack, exams, index, name, at_s, action, settle_s=PATIENT_QUIET_S)
