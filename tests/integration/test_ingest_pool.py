"""The ingest pool (`radstream ingest --processes 2`) on the session broker, 127.0.0.1 only.

Rules under test: two processes serve one port and both take associations; every acknowledged
instance has its bytes in the store and exactly one event identity on the instances topic
(copies only of the same event id, after a crash); a process killed with kill -9 while senders
keep sending is restarted in its slot, and its replacement drains the outbox it left.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from radstream.producers.pool import pending_events, slot_outbox_path
from radstream.producers.sample_series import write_series
from radstream.producers.scu import SendResult, send_paths

from radstream.devenv.process import ManagedProcess, free_port, port_open
from radstream.events.models import InstanceReceived
from radstream.settings import Settings
from tests.integration.ingest_support import (
    child_env,
    events_by_sop,
    ingest_settings,
    running_ingest,
    sop_uid,
    stored_bytes,
)
from tests.integration.observability_support import metric
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.dicom, pytest.mark.slow]

INSTANCES = "radstream_ingest_instances_total"


def _free_pair() -> int:
    """A port p with p and p+1 free (the two processes' /metrics)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no two consecutive free ports")


class Pool:
    """`radstream ingest --processes 2` as a background process group, with its slots' pids and metrics."""

    def __init__(self, settings: Settings, tmp_path: Path, **env: str) -> None:
        self.settings = settings
        self.metrics_base = _free_pair()
        self.log = tmp_path / "pool.log"
        self.proc = ManagedProcess("pool", tmp_path / "pool.pid", self.log)
        self.env = child_env(settings, RADSTREAM_INGEST__METRICS_PORT=str(self.metrics_base), **env)

    def start(self) -> None:
        argv = [str(Path(sys.executable).parent / "radstream"), "ingest", "--processes", "2", "--log-level", "INFO"]
        self.proc.start(argv, env=self.env)
        eventually(lambda: len(self.listening()) >= 2, timeout=60, what="both pool processes to listen")

    def stop(self) -> None:
        self.proc.stop(timeout=40)

    def slots(self) -> dict[int, int]:
        """Slot -> pid of the supervisor's children."""
        parent = self.proc.pid()
        if parent is None:
            return {}
        out = {}
        for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--pool-slot" in argv:
                out[int(argv[argv.index(b"--pool-slot") + 1])] = int(pid)
        return out

    def listening(self) -> list[str]:
        """The slots' lines "ingest SCP listening" so far (one per process start)."""
        text = self.log.read_text() if self.log.exists() else ""
        return re.findall(r"ingest SCP listening on 127\.0\.0\.1:\d+", text) if port_open(
            "127.0.0.1", self.settings.dicom.port) else []

    def instances(self, slot: int) -> float:
        return metric(self.metrics_base + slot, INSTANCES)

    def waiting_at_start(self, slot: int, pid: int) -> int | None:
        """Events the process ``pid`` of ``slot`` found in its outbox when it took the lease."""
        m = re.search(rf"ingest pool slot {slot} \(pid {pid}\): leased outbox \S+, (\d+) events waiting",
                      self.log.read_text())
        return int(m.group(1)) if m else None


def _assert_once_each(settings: Settings, acked: set[str], events: dict[str, list[InstanceReceived]]) -> int:
    """Every acked SOP instance has an event, one event identity, its bytes in the store; returns the copies."""
    missing = acked - set(events)
    assert not missing, f"{len(missing)} acknowledged instances have no event"
    for sop in acked:
        ids = {(e.event_id, e.sha256, e.store_uri) for e in events[sop]}
        assert len(ids) == 1, f"{sop}: {len(ids)} different events"
        e = events[sop][0]
        assert hashlib.sha256(stored_bytes(e.store_uri, settings)).hexdigest() == e.sha256
    return sum(len(evs) - 1 for evs in events.values())


def test_two_processes_share_the_port_and_publish_each_instance_once(kafka_settings: Settings,
                                                                      tmp_path: Path) -> None:
    s = ingest_settings(kafka_settings)
    files = write_series(tmp_path / "series", 160, rows=64, columns=64, seed=31)
    sops = {f: sop_uid(f) for f in files}
    pool = Pool(s, tmp_path)
    pool.start()
    try:
        # four rounds of four concurrent associations: 16 connections for the kernel to spread
        for i in range(4):
            summary = send_paths(files[i::4], port=s.dicom.port, associations=4)
            assert summary.statuses == {"0x0000": 40}, summary.line()
        served = {slot: pool.instances(slot) for slot in (0, 1)}
        assert sum(served.values()) == len(files), served
        assert all(n > 0 for n in served.values()), f"one process served everything: {served}"
        events = events_by_sop(s, len(files), timeout=60)
        assert set(events) == set(sops.values())
        assert _assert_once_each(s, set(sops.values()), events) == 0, "duplicate events without any fault"
    finally:
        pool.stop()
    for slot in (0, 1):
        assert pending_events(slot_outbox_path(s, slot)) == 0


def test_kill9_of_one_process_while_senders_keep_sending(kafka_settings: Settings, tmp_path: Path) -> None:
    s = ingest_settings(kafka_settings)
    files = write_series(tmp_path / "series", 240, rows=64, columns=64, seed=32)
    sops = {f: sop_uid(f) for f in files}
    # events wait up to 1.5 s in the outbox between batches: the killed process leaves some behind
    pool = Pool(s, tmp_path, RADSTREAM_INGEST__OUTBOX_LINGER_MS="1500")
    pool.start()
    acked: set[str] = set()
    lock = threading.Lock()
    victim: list[tuple[int, int]] = []  # (slot, pid)

    def kill_the_busier() -> None:
        slots = pool.slots()
        slot = max(slots, key=pool.instances)
        os.kill(slots[slot], signal.SIGKILL)
        victim.append((slot, slots[slot]))

    def on_result(r: SendResult) -> None:
        with lock:
            if r.ok:
                acked.add(sops[r.path])
            if len(acked) == 80 and not victim:
                kill_the_busier()
        time.sleep(0.005)  # a modality's pace: the senders are still sending when the kill lands

    try:
        pending = list(files)
        for _ in range(6):  # the senders retry what failed until every instance is acknowledged
            summary = send_paths(pending, port=s.dicom.port, associations=4, on_result=on_result, timeout_s=5)
            pending = [r.path for r in summary.results if not r.ok]
            if not pending:
                break
            time.sleep(0.5)
        assert victim, "the kill did not happen"
        assert not pending, f"{len(pending)} instances never acknowledged"
        slot, dead = victim[0]
        new = eventually(lambda: (p := pool.slots().get(slot)) not in (None, dead) and p, timeout=30,
                         what="the supervisor to restart the killed slot")
        waiting = eventually(lambda: pool.waiting_at_start(slot, new), timeout=30,
                             what="the replacement to lease its outbox")
        assert waiting is not None and waiting > 0, "the killed process left nothing in its outbox to drain"
        eventually(lambda: pending_events_gone(s, slot), timeout=60,
                   what="the replacement to drain its outbox")
        events = events_by_sop(s, len(files), timeout=60)
        assert set(events) == set(sops.values())
        copies = _assert_once_each(s, set(sops.values()), events)
        print(f"kill -9 of slot {slot}: {waiting} events left in its outbox, drained by the replacement; "
              f"{copies} copies of an event on the topic (same event id: resent or re-sent after the crash)")
    finally:
        pool.stop()
    for i in (0, 1):
        assert pending_events(slot_outbox_path(s, i)) == 0


def test_the_pool_drains_an_outbox_no_slot_owns(kafka_settings: Settings, tmp_path: Path) -> None:
    """An outbox of slot 5 (an earlier, larger pool) with events in it: a process of the pool of 2 sends them."""
    base = ingest_settings(kafka_settings)
    orphan = slot_outbox_path(base, 5)
    # a lone SCP writing to slot 5's outbox, batching at most once a minute and stopped without draining
    s = ingest_settings(kafka_settings, outbox_path=orphan, outbox_linger_ms=60_000.0, close_drain_s=0.0)
    files = write_series(tmp_path / "series", 21, rows=64, columns=64, seed=33)
    with running_ingest(s) as server:
        first = send_paths(files[:1], port=server.port)
        eventually(lambda: pending_events(orphan) == 0, timeout=30, what="the first event to go at once")
        rest = send_paths(files[1:], port=server.port)
    assert first.ok + rest.ok == len(files)
    left = pending_events(orphan)
    assert left == len(files) - 1, left
    pool = Pool(s.model_copy(update={"ingest": base.ingest}), tmp_path)
    pool.start()
    try:
        eventually(lambda: pending_events(orphan) == 0, timeout=60, what="the pool to drain the orphan outbox")
        events = events_by_sop(s, len(files), timeout=60)
        assert {e.sop_instance_uid for evs in events.values() for e in evs} == {sop_uid(f) for f in files}
        assert _assert_once_each(s, set(events), events) == 0
        assert f"sent {left} of {left} events from {orphan}" in pool.log.read_text()
    finally:
        pool.stop()


def pending_events_gone(settings: Settings, slot: int) -> bool:
    """The slot's outbox holds no record (read beside its live owner: SQLite in WAL mode allows it)."""
    return pending_events(slot_outbox_path(settings, slot)) == 0
