"""The aggregator on the real broker: timing, kill -9 and restart, two workers and a rebalance, poison events."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from radstream.stream_apps.aggregator import AggregatorWorker

from radstream.events.models import CompletionReason, DeadLetter, SeriesCompleted, StudyCompleted
from radstream.settings import Settings
from tests.integration.aggregator_support import Sender, committed_lag, instance, read_all, start_worker
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GROUP = "radstream-aggregator"


def _settings(s: Settings, **agg: float) -> Settings:
    return s.model_copy(update={"aggregator": s.aggregator.model_copy(update=agg)})


def _series(s: Settings) -> list[SeriesCompleted]:
    return [e for _, e in read_all(s, s.topic("series")) if isinstance(e, SeriesCompleted)]


def _studies(s: Settings) -> list[StudyCompleted]:
    return [e for _, e in read_all(s, s.topic("studies")) if isinstance(e, StudyCompleted)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_series_and_studies_close_within_one_timer_interval(kafka_settings: Settings) -> None:
    s = _settings(kafka_settings, series_quiet_s=2.0, patient_quiet_s=3.0, timer_interval_s=0.5)
    worker = AggregatorWorker(s)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        # measure the timers, not the worker's start: on a fresh broker the first group join and the
        # transaction coordinator's first load take seconds
        eventually(lambda: len(worker.assigned) == s.kafka.default_partitions and not worker._catch_up,
                   timeout=60, what="the worker to own every partition and read its backlog")
        snd = Sender(s)
        last_sent: dict[str, float] = {}
        for p in range(4):
            for i in range(6):
                snd.send(instance(f"P{p}", f"1.2.{p}", f"1.2.{p}.1", i))
            snd.flush()
            last_sent[f"P{p}"] = time.time()
            time.sleep(0.3)
        studies = eventually(lambda: len(_studies(s)) == 4 and _studies(s), timeout=30, what="4 studies")
        series = _series(s)
    finally:
        worker.stop()
        t.join(15)
    assert len(series) == 4 and all(len(e.instances) == 6 and e.revision == 0 for e in series)
    slack = 0.35  # one transaction commit and the broker round trips on a shared 2-core machine
    for e in series:
        waited = e.occurred_at.timestamp() - last_sent[e.patient_key]
        assert 2.0 - 0.05 <= waited <= 2.0 + 0.5 + slack, waited
        assert [i.instance_number for i in e.instances] == list(range(6))
    for st in studies:
        waited = st.occurred_at.timestamp() - last_sent[st.patient_key]
        assert 3.0 - 0.05 <= waited <= 3.0 + 0.5 + slack, waited
        assert st.reason is CompletionReason.QUIET_PERIOD and st.series[0].instance_count == 6


def test_kill_9_with_open_series_then_restart_closes_each_exactly_once(kafka_settings: Settings,
                                                                         tmp_path: Path) -> None:
    s = kafka_settings
    cfg = {"series_quiet_s": 6.0, "patient_quiet_s": 8.0, "timer_interval_s": 0.5}
    log = tmp_path / "worker.log"
    proc = start_worker(s, log, **cfg)
    try:
        snd = Sender(s)
        for p in range(6):
            for i in range(5):
                snd.send(instance(f"K{p}", f"2.{p}", f"2.{p}.1", i))
        snd.flush()
        eventually(lambda: committed_lag(s, GROUP, s.topic("instances")) == 0, timeout=60,
                   what="worker consumed everything")
        assert _series(s) == []  # all still open
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # more instances arrive while the worker is down: they belong to the open series
        for p in range(6):
            snd.send(instance(f"K{p}", f"2.{p}", f"2.{p}.1", 5))
        snd.flush()
        proc = start_worker(s, log, **cfg)
        eventually(lambda: len(_studies(s)) >= 6, timeout=60, what="6 studies after restart")
        time.sleep(2.0)  # a duplicate close would show up within a few timer intervals
        series, studies = _series(s), _studies(s)
    finally:
        _stop(proc)
    counts = collections.Counter((e.study_instance_uid, e.series_instance_uid, e.revision) for e in series)
    assert len(counts) == 6 and set(counts.values()) == {1}, (counts, log.read_text()[-3000:])
    assert all(len(e.instances) == 6 and e.reason is CompletionReason.QUIET_PERIOD for e in series)
    assert len(studies) == 6 and len({e.event_id for e in studies}) == 6


def test_restart_after_deadlines_passed_waits_for_instances_held_upstream(kafka_settings: Settings,
                                                                          tmp_path: Path) -> None:
    """The worker was down past a series' quiet period while an SCP held its last instance in its
    outbox: the restarted worker must not close the series before that instance arrives."""
    s = kafka_settings
    cfg = {"series_quiet_s": 2.0, "patient_quiet_s": 3.0, "timer_interval_s": 0.5, "recovery_grace_s": 8.0}
    proc = start_worker(s, tmp_path / "first.log", **cfg)
    log = tmp_path / "restarted.log"
    try:
        snd = Sender(s)
        for i in range(3):
            snd.send(instance("H1", "5.1", "5.1.1", i))
        snd.flush()
        eventually(lambda: committed_lag(s, GROUP, s.topic("instances")) == 0, timeout=60,
                   what="worker consumed everything")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(4.0)  # nobody runs while the series' quiet period (and the patient's) passes
        proc = start_worker(s, log, **cfg)
        eventually(lambda: log.exists() and "timers wait" in log.read_text(), timeout=60,
                   what="restored with deadlines passed")
        time.sleep(2.0)  # the SCP's outbox drains a moment after the broker is back
        snd.send(instance("H1", "5.1", "5.1.1", 3))
        snd.flush()
        eventually(lambda: len(_studies(s)) >= 1, timeout=60, what="the study closed")
        time.sleep(2.0)  # a second revision would show up within a few timer intervals
        series = _series(s)
    finally:
        _stop(proc)
    assert [(e.revision, e.reason, len(e.instances)) for e in series] == [(0, CompletionReason.QUIET_PERIOD, 4)], (
        series, log.read_text()[-3000:])


def test_two_workers_and_a_rebalance_lose_nothing(kafka_settings: Settings, tmp_path: Path) -> None:
    s = kafka_settings
    cfg = {"series_quiet_s": 4.0, "patient_quiet_s": 5.0, "timer_interval_s": 0.5}
    a = start_worker(s, tmp_path / "a.log", **cfg)
    b: subprocess.Popen[bytes] | None = None
    snd = Sender(s)
    n_patients, per_series = 12, 10
    try:
        for i in range(per_series):
            for p in range(n_patients):
                snd.send(instance(f"R{p}", f"3.{p}", f"3.{p}.1", i))
            snd.flush()
            if i == 3:
                b = start_worker(s, tmp_path / "b.log", **cfg)  # joins: rebalance
            if i == 6:
                _stop(a)  # leaves: rebalance, B takes over A's partitions and their open series
            time.sleep(0.25)
        eventually(lambda: len(_studies(s)) >= n_patients, timeout=90, what="all studies")
        time.sleep(2.0)
        series, studies = _series(s), _studies(s)
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
    by_series = collections.Counter(e.series_instance_uid for e in series)
    assert len(by_series) == n_patients and set(by_series.values()) == {1}, by_series
    assert all(len(e.instances) == per_series for e in series), [len(e.instances) for e in series]
    assert len(studies) == n_patients


def test_poison_event_goes_to_deadletter_and_processing_continues(kafka_settings: Settings) -> None:
    s = _settings(kafka_settings, series_quiet_s=1.0, patient_quiet_s=1.5, timer_interval_s=0.25)
    worker = AggregatorWorker(s)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        snd = Sender(s)
        snd.raw(b"PX", b"\x00not avro at all")
        snd.send(instance("PX", "4.1", "4.1.1", 1))
        snd.flush()
        dead = eventually(lambda: [e for _, e in read_all(s, s.topic("deadletter"))], timeout=30, what="dead letter")
        eventually(lambda: _studies(s), timeout=30, what="the good instance's study")
    finally:
        worker.stop()
        t.join(15)
    (dl,) = dead
    assert isinstance(dl, DeadLetter)
    assert dl.source_topic == s.topic("instances") and dl.payload == b"\x00not avro at all"
    assert dl.component == "aggregator" and dl.error_type == "DecodeError" and dl.source_offset >= 0
    assert len(_series(s)) == 1
