"""Durability: kill -9 of the SCP mid-series, and a Kafka outage of more than 30 s mid-send.

Rule under test: an instance answered with success has its bytes in the store and its
event on Kafka (after the outbox drained); resends are harmless (same event id).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from radstream.producers.sample_series import write_series
from radstream.producers.scu import SendResult, send_paths

from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import ManagedProcess, free_port, port_open
from radstream.events.models import InstanceReceived
from radstream.kafka.topics import create_topics
from radstream.settings import Settings
from tests.integration.ingest_support import (
    child_env,
    events_by_sop,
    ingest_settings,
    running_ingest,
    sop_uid,
    stored_bytes,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.dicom, pytest.mark.slow]


def _assert_durable(settings: Settings, acked: set[str], events: dict[str, list[InstanceReceived]]) -> None:
    missing = acked - set(events)
    assert not missing, f"{len(missing)} acknowledged instances have no event"
    for sop in acked:
        for e in events[sop]:
            assert hashlib.sha256(stored_bytes(e.store_uri, settings)).hexdigest() == e.sha256


def _assert_dedupable(events: dict[str, list[InstanceReceived]]) -> None:
    for sop, evs in events.items():
        assert len({(e.event_id, e.sha256, e.store_uri) for e in evs}) == 1, f"{sop}: copies differ"


def test_kill9_mid_series_then_resend(kafka_settings: Settings, tmp_path: Path) -> None:
    s = ingest_settings(kafka_settings)
    files = write_series(tmp_path / "series", 200, rows=64, columns=64, seed=11)
    sops = {f: sop_uid(f) for f in files}
    proc = ManagedProcess("ingest", tmp_path / "ingest.pid", tmp_path / "ingest.log")
    argv = [str(Path(sys.executable).parent / "radstream"), "ingest", "--log-level", "WARNING"]
    env = child_env(s)

    def start() -> None:
        proc.start(argv, env=env)
        eventually(lambda: port_open("127.0.0.1", s.dicom.port), timeout=30, what="radstream ingest to listen")

    start()
    acked: set[str] = set()
    killed = threading.Event()

    def on_result(r: SendResult) -> None:
        if r.ok and not killed.is_set():
            acked.add(sops[r.path])
            if len(acked) == 80:
                pid = proc.pid()
                assert pid is not None
                os.killpg(pid, signal.SIGKILL)
                killed.set()

    # a short DIMSE timeout: a sender whose peer vanished gives up quickly
    first = send_paths(files, port=s.dicom.port, associations=2, on_result=on_result, timeout_s=5)
    assert killed.is_set()
    assert 80 <= first.ok < 200, first.line()
    eventually(lambda: not proc.running(), timeout=10, what="the SCP to die")

    start()
    try:
        # before any resend: every instance acknowledged before the crash has bytes and an event
        _assert_durable(s, acked, events_by_sop(s, len(acked), timeout=30))
        second = send_paths(files, port=s.dicom.port, associations=2)
        assert second.statuses == {"0x0000": 200}, second.line()
        events = events_by_sop(s, 200, timeout=60)
        assert set(events) == set(sops.values())
        _assert_durable(s, set(sops.values()), events)
        _assert_dedupable(events)
    finally:
        proc.stop(timeout=10)


def test_kafka_outage_of_30s_during_a_send(base_settings: Settings, tmp_path: Path) -> None:
    kafka = KafkaServer(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    try:
        s = base_settings.model_copy(update={"kafka": base_settings.kafka.model_copy(
            update={"bootstrap_servers": kafka.bootstrap, "topic_prefix": "outage", "default_partitions": 3})})
        create_topics(s)
        s = ingest_settings(s, publish_timeout_s=2.0)
        before = write_series(tmp_path / "a", 120, rows=64, columns=64, seed=21)
        during = write_series(tmp_path / "b", 60, rows=64, columns=64, seed=22)
        acked: set[str] = set()
        stopped_at: list[float] = []
        depth_seen: list[int] = []
        with running_ingest(s) as server:
            def on_result(r: SendResult) -> None:
                if r.ok:
                    acked.add(sop_uid(r.path))
                time.sleep(0.03)  # a modality's pace, so the outage lands mid-send

            def stop_kafka() -> None:
                eventually(lambda: len(acked) >= 30, timeout=60, what="30 acknowledged instances")
                kafka.stop()
                stopped_at.append(time.monotonic())

            stopper = threading.Thread(target=stop_kafka)
            stopper.start()
            first = send_paths(before, port=server.port, on_result=on_result)
            stopper.join()
            assert first.statuses == {"0x0000": len(before)}, first.line()
            # Kafka is still down: keep sending, then hold the outage past 30 s
            second = send_paths(during, port=server.port, on_result=on_result)
            assert second.statuses == {"0x0000": len(during)}, second.line()
            depth_seen.append(server.publisher.backlog if server.publisher else 0)
            remaining = 30.0 - (time.monotonic() - stopped_at[0])
            if remaining > 0:
                time.sleep(remaining)
            assert depth_seen[0] > 0, "nothing went to the outbox while Kafka was down"
            kafka.start()
            eventually(lambda: server.publisher is not None and server.publisher.backlog == 0, timeout=90,
                       what="the outbox to drain")
            events = events_by_sop(s, len(acked), timeout=60)
        assert len(acked) == len(before) + len(during)
        _assert_durable(s, acked, events)
        _assert_dedupable(events)
    finally:
        kafka.stop()
