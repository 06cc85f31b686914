"""Unit tests of the ingest pool's parts: slot files and ports, outbox leases, SO_REUSEPORT, the supervisor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from radstream.producers.lease import OutboxLease, lock_path_for
from radstream.producers.outbox import Outbox
from radstream.producers.pool import (
    PoolSupervisor,
    metrics_port_for,
    orphan_outboxes,
    pending_events,
    pool_size,
    reserve_port,
    slot_of,
    slot_outbox_path,
    slot_settings,
)
from radstream.producers.scp import ReusePortAssociationServer

from radstream.settings import Settings
from tests.waiting import eventually

pytestmark = pytest.mark.unit


def _with_ingest(s: Settings, **ingest: object) -> Settings:
    return s.model_copy(update={"ingest": s.ingest.model_copy(update=ingest)})


def test_slot_outboxes_sit_beside_the_configured_one(base_settings: Settings) -> None:
    base = base_settings.outbox_path
    assert slot_outbox_path(base_settings, 3) == base.with_name("outbox-3.sqlite3")
    assert slot_of(base_settings, base.with_name("outbox-12.sqlite3")) == 12
    assert slot_of(base_settings, base) is None
    assert slot_of(base_settings, base.with_name("outbox-x.sqlite3")) is None
    assert slot_settings(base_settings, 1).outbox_path == base.with_name("outbox-1.sqlite3")


def test_orphans_are_the_single_outbox_and_slots_beyond_the_pool(base_settings: Settings) -> None:
    base = base_settings.outbox_path
    base.parent.mkdir(parents=True)
    for name in ("outbox.sqlite3", "outbox-0.sqlite3", "outbox-1.sqlite3", "outbox-2.sqlite3", "outbox-3.sqlite3",
                 "outbox-1.sqlite3.lock", "other.sqlite3"):
        (base.parent / name).touch()
    assert [p.name for p in orphan_outboxes(base_settings, 2)] == [
        "outbox.sqlite3", "outbox-2.sqlite3", "outbox-3.sqlite3"]


def test_metrics_ports_per_slot(base_settings: Settings) -> None:
    assert metrics_port_for(base_settings, 0) == 9150
    assert metrics_port_for(base_settings, 2) == 9152
    assert metrics_port_for(_with_ingest(base_settings, metrics_port=7000), 1) == 7001
    assert metrics_port_for(_with_ingest(base_settings, metrics_port=0), 1) == 0
    ports = {**base_settings.observability.ports, "ingest": 0}
    off = base_settings.model_copy(update={"observability": base_settings.observability.model_copy(
        update={"ports": ports})})
    assert metrics_port_for(off, 1) == 0


def test_pool_size_zero_means_the_cores() -> None:
    assert pool_size(3) == 3
    assert pool_size(0) == len(os.sched_getaffinity(0))


def test_a_lease_is_exclusive_until_released(tmp_path: Path) -> None:
    path = tmp_path / "ingest" / "outbox-0.sqlite3"
    first = OutboxLease.try_acquire(path)
    assert first is not None and lock_path_for(path).is_file()
    assert OutboxLease.try_acquire(path) is None  # another open file description: refused, even in-process
    first.release()
    with OutboxLease.try_acquire(path) as again:  # type: ignore[union-attr]
        assert again.held


def test_a_lease_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "outbox-1.sqlite3"
    code = ("import sys, time; from pathlib import Path; from radstream.producers.lease import OutboxLease; "
            "lease = OutboxLease.try_acquire(Path(sys.argv[1])); print('held' if lease else 'busy', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert OutboxLease.try_acquire(path) is None
        waiting = threading.Event()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        lease = OutboxLease.acquire(path, waiting, poll_s=0.05)
        assert lease is not None
        lease.release()
    finally:
        holder.kill()
        holder.wait()


def test_acquire_gives_up_when_stopped(tmp_path: Path) -> None:
    path = tmp_path / "outbox-0.sqlite3"
    stop = threading.Event()
    with OutboxLease.try_acquire(path):  # type: ignore[union-attr]
        stop.set()
        assert OutboxLease.acquire(path, stop, poll_s=0.01) is None


def test_pending_events_counts_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox-0.sqlite3"
    assert pending_events(path) == 0
    box = Outbox(path)
    for i in range(3):
        box.append("t", None, f"v{i}".encode(), "E")
    box.delete([1])
    box.close()
    assert pending_events(path) == 2


def test_processes_share_a_port_with_reuseport() -> None:
    reservation = reserve_port("127.0.0.1", 0)
    port = int(reservation.getsockname()[1])
    ae = AE()
    ae.add_supported_context(Verification)
    servers = [ae.make_server(("127.0.0.1", port), server_class=ReusePortAssociationServer) for _ in range(2)]
    ae._servers.extend(servers)  # as AE.start_server does (its shutdown() removes them)
    try:
        threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
        for t in threads:
            t.start()
        scu = AE()
        scu.add_requested_context(Verification)
        for _ in range(4):
            assoc = scu.associate("127.0.0.1", port)
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # without SO_REUSEPORT the port is not free
        plain.close()
    finally:
        for s in servers:
            s.shutdown()
        reservation.close()


def test_supervisor_restarts_a_dead_process_and_stops_all(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(120)"]
    supervisor = PoolSupervisor(lambda slot: argv, 2, stop_timeout_s=5)
    stop = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop, 0.05))
    runner.start()
    try:
        first = eventually(lambda: supervisor.pids() if len(supervisor.pids()) == 2 else None, timeout=10,
                           what="two processes")
        os.kill(first[1], signal.SIGKILL)
        again = eventually(lambda: (p := supervisor.pids()).get(1) not in (None, first[1]) and p, timeout=10,
                           what="slot 1 restarted")
        assert again[0] == first[0]
    finally:
        stop.set()
        runner.join(15)
    assert not runner.is_alive()
    for pid in again.values():
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: the supervisor waited for it
