"""The ingest pool: N SCP processes serving one DICOM port (``radstream ingest --processes N``).

One pynetdicom process is CPU-bound in pynetdicom's own PDU code under one interpreter lock;
a pool spreads associations over N interpreters. Shape and guarantees:

- **One port.** Every pool process listens on the same address with ``SO_REUSEPORT`` (Linux);
  the kernel spreads new connections among the listening processes (by a hash of the peer's
  address and port). The supervisor binds the port too (with ``SO_REUSEPORT``, never
  listening, so it receives no connection): the port stays the pool's while a process restarts,
  and a port taken by another program is reported before any process starts. The kernel's choice
  is a hash, not a balance: 4 associations split 2/2 over 2 processes only 3 times in 8 (3/1 or
  4/0 otherwise), which caps what a pool gains for few long associations; a supervisor that
  accepts and hands each socket to the least-loaded process would balance them (not built).
- **One outbox per process.** Slot ``i`` (0..N-1) writes its events ahead to
  ``<outbox dir>/<outbox name>-<i>.sqlite3`` and holds an exclusive lease on it
  (:class:`~radstream.producers.lease.OutboxLease`) for its whole life, taken before its SCP
  listens. So no two processes ever drain one outbox, and events of one outbox reach Kafka in
  the order they were accepted (the :class:`~radstream.producers.publisher.Publisher`'s drain).
- **Restart.** The supervisor restarts a process that dies, in the same slot: the replacement
  takes the same lease (the kernel dropped the dead holder's) and drains what its predecessor
  left, in order, before and while it serves. A record is deleted only after Kafka acknowledged
  it, so a record sent but not yet deleted when its process died is sent once more: the same
  event id (dedupable), never a lost event.
- **Orphans.** At start and every ``ingest.pool_orphan_sweep_s``, each process drains any outbox
  of the folder no slot of this pool owns (slots of an earlier, larger pool; the single process's
  ``<outbox name>.sqlite3``) whose lease it can take, with the same Publisher.
  Do not run a single-process ``radstream ingest`` on the same home as a pool: it takes no lease.
- **Stop.** SIGTERM or SIGINT to the supervisor is forwarded to every process; each stops as a
  single SCP does (the outbox drains for up to ``ingest.close_drain_s``); those left after
  ``ingest.pool_stop_timeout_s`` are killed (their outboxes drain at the next start). A process
  whose supervisor died stops by itself within about a second.
- **Metrics and health.** Per process: slot ``i`` serves /metrics, /healthz, /readyz on
  ``ingest.pool_metrics_port + i`` (or ``ingest.metrics_port + i`` where that is set; off stays
  off), its info metric labelled ``slot``. The supervisor serves none; sum the processes'
  counters for the pool. Limits per peer (``dicom.max_associations_per_peer``) and
  ``dicom.max_associations`` apply per process.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from radstream.producers.lease import OutboxLease
from radstream.producers.metrics import IngestMetrics

from radstream.settings import Settings

log = logging.getLogger(__name__)

RAPID_EXIT_S = 10.0  # a process that dies sooner than this after its start is restarted with a back-off
MAX_BACKOFF_S = 10.0


def pool_size(requested: int) -> int:
    """``requested`` processes; 0 means one per CPU core this process may run on."""
    return requested if requested > 0 else max(1, len(os.sched_getaffinity(0)))


# --- slots: outbox files and ports ---


def slot_outbox_path(settings: Settings, slot: int) -> Path:
    """Slot ``slot``'s outbox: ``outbox.sqlite3`` -> ``outbox-<slot>.sqlite3`` in the same folder."""
    base = settings.outbox_path
    return base.with_name(f"{base.stem}-{slot}{base.suffix}")


def slot_of(settings: Settings, path: Path) -> int | None:
    """The slot whose outbox ``path`` is, or None for any other file."""
    base = settings.outbox_path
    m = re.fullmatch(rf"{re.escape(base.stem)}-(\d+){re.escape(base.suffix)}", path.name)
    return int(m.group(1)) if m else None


def metrics_port_for(settings: Settings, slot: int) -> int:
    """Slot ``slot``'s /metrics port: base + slot, base = ``ingest.metrics_port`` or ``ingest.pool_metrics_port``;
    0 (off) when the ingest metrics are off."""
    ing = settings.ingest
    if ing.metrics_port == 0 or (ing.metrics_port is None and settings.observability.port_for("ingest") == 0):
        return 0
    base = ing.metrics_port if ing.metrics_port is not None else ing.pool_metrics_port
    return base + slot if base else 0


def slot_settings(settings: Settings, slot: int) -> Settings:
    """``settings`` as slot ``slot`` runs with them: its own outbox and metrics port."""
    ingest = settings.ingest.model_copy(update={"outbox_path": slot_outbox_path(settings, slot),
                                                "metrics_port": metrics_port_for(settings, slot)})
    return settings.model_copy(update={"ingest": ingest})


# --- orphan outboxes ---


def orphan_outboxes(settings: Settings, processes: int) -> list[Path]:
    """Outbox files of the folder that no slot of a pool of ``processes`` owns (they may be empty)."""
    base = settings.outbox_path
    found = [base] if base.is_file() else []
    if base.parent.is_dir():
        for p in sorted(base.parent.glob(f"{base.stem}-*{base.suffix}")):
            slot = slot_of(settings, p)
            if slot is not None and slot >= processes:
                found.append(p)
    return found


def pending_events(path: Path) -> int:
    """Records waiting in the outbox at ``path`` (0 for a missing file or table); a read, safe beside its owner."""
    if not path.is_file():
        return 0
    db = sqlite3.connect(path, isolation_level=None)
    try:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:  # no table: nothing was ever written
        return 0
    finally:
        db.close()


def drain_orphan(settings: Settings, path: Path, stop: threading.Event, timeout_s: float = 60.0) -> int:
    """Send what the outbox at ``path`` holds, if its lease is free; returns the records sent and deleted.

    Holds the lease throughout, so no other process drains it meanwhile; uses the Publisher's own
    drain (in order, deleted after Kafka's ack). Gives up after ``timeout_s`` (Kafka down): the
    rest waits for the next sweep.
    """
    from radstream.producers.publisher import Publisher

    lease = OutboxLease.try_acquire(path)
    if lease is None:
        return 0
    with lease:
        before = pending_events(path)
        if before == 0:
            return 0
        log.info("draining %d events from the unowned outbox %s", before, path)
        ingest = settings.ingest.model_copy(update={"outbox_path": path})
        publisher = Publisher(settings.model_copy(update={"ingest": ingest}), IngestMetrics(),
                              client_id="radstream-ingest-orphans")
        publisher.start()
        try:
            deadline = time.monotonic() + timeout_s
            while publisher.backlog and time.monotonic() < deadline and not stop.wait(0.05):
                pass
        finally:
            publisher.close()
        sent = before - pending_events(path)
        log.info("sent %d of %d events from %s", sent, before, path)
        return sent


class OrphanSweeper:
    """Drains orphan outboxes at start and every ``ingest.pool_orphan_sweep_s`` until ``stop`` is set."""

    def __init__(self, settings: Settings, processes: int, stop: threading.Event,
                 on_sent: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.processes = processes
        self.stop = stop
        self.on_sent = on_sent
        self._thread = threading.Thread(target=self._loop, name="ingest-orphan-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def sweep_once(self) -> int:
        """One pass over the orphan outboxes; returns the events sent. Errors are logged, never raised."""
        sent = 0
        for path in orphan_outboxes(self.settings, self.processes):
            if self.stop.is_set():
                break
            try:
                sent += drain_orphan(self.settings, path, self.stop)
            except Exception as exc:
                log.warning("could not drain the outbox %s: %s", path, exc)
        if sent and self.on_sent is not None:
            self.on_sent(sent)
        return sent

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.sweep_once()
            self.stop.wait(self.settings.ingest.pool_orphan_sweep_s)


# --- one pool process ---


def serve_slot(settings: Settings, slot: int, processes: int, stop: threading.Event) -> int:
    """Run slot ``slot`` of a pool of ``processes`` until ``stop`` is set or the supervisor dies; exit status.

    Takes the slot's outbox lease first (waiting while a survivor drains it), then serves the
    port with ``SO_REUSEPORT``; the Publisher drains what the outbox holds from before.
    """
    from prometheus_client import Counter
    from radstream.producers.scp import IngestServer

    path = slot_outbox_path(settings, slot)
    lease = OutboxLease.acquire(path, stop)
    if lease is None:
        return 0
    with lease:
        waiting = pending_events(path)
        log.info("ingest pool slot %d (pid %d): leased outbox %s, %d events waiting from before",
                 slot, os.getpid(), path, waiting)
        metrics = IngestMetrics(labels={"slot": str(slot)})
        orphans = Counter("radstream_ingest_pool_orphan_events_total",
                          "events this process sent from outboxes no pool process owned", registry=metrics.registry)
        server = IngestServer(slot_settings(settings, slot), metrics, reuse_port=True)
        server.start()
        sweeper: OrphanSweeper | None = None
        if server.publisher is not None and settings.ingest.outbox:
            sweeper = OrphanSweeper(settings, processes, stop, on_sent=orphans.inc)
            sweeper.start()
        try:
            _wait_while_supervised(stop)
        finally:
            stop.set()
            server.stop()
            if sweeper is not None:
                sweeper.join(10.0)
    return 0


def _wait_while_supervised(stop: threading.Event) -> None:
    """Return when ``stop`` is set, or when the parent (the supervisor) is gone."""
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("ingest pool supervisor (pid %d) is gone: stopping", parent)
            return


# --- the supervisor ---


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with ``SO_REUSEPORT`` without listening (0: a free port); raises OSError if taken.

    The pool's processes bind the same address; this socket receives no connection (only
    listening sockets do) and keeps the port from other programs while a process restarts.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0


class PoolSupervisor:
    """Starts ``processes`` pool processes (``argv_for(slot)``), restarts any that dies in its slot,
    and on stop forwards SIGTERM to all and waits (SIGKILL after ``stop_timeout_s``)."""

    def __init__(self, argv_for: Callable[[int], Sequence[str]], processes: int, stop_timeout_s: float = 30.0,
                 env: Mapping[str, str] | None = None) -> None:
        self.argv_for = argv_for
        self.slots = [_Slot(i) for i in range(processes)]
        self.stop_timeout_s = stop_timeout_s
        self.env = dict(env) if env is not None else None

    def pids(self) -> dict[int, int]:
        """Slot -> pid of its running process."""
        return {s.index: s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None}

    def run(self, stop: threading.Event, poll_s: float = 0.2) -> int:
        """Supervise until ``stop`` is set; then stop every process. Returns 0."""
        try:
            for slot in self.slots:
                self._start(slot)
            while not stop.wait(poll_s):
                for slot in self.slots:
                    self._check(slot)
        finally:
            self._stop_all()
            log.info("ingest pool: stopped")
        return 0

    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(list(self.argv_for(slot.index)), env=self.env)
        slot.started = time.monotonic()
        log.info("ingest pool: slot %d started (pid %d)", slot.index, slot.proc.pid)

    def _check(self, slot: _Slot) -> None:
        """Notice a dead process and restart its slot, at once or after a back-off if it keeps dying."""
        now = time.monotonic()
        if slot.proc is not None:
            code = slot.proc.poll()
            if code is None:
                return
            rapid = now - slot.started < RAPID_EXIT_S
            slot.restarts = slot.restarts + 1 if rapid else 0
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (slot.restarts - 1)) if rapid else 0.0
            log.warning("ingest pool: slot %d (pid %d) exited with %s; restarting it in %.1f s",
                        slot.index, slot.proc.pid, code, delay)
            slot.proc, slot.next_start = None, now + delay
        if now >= slot.next_start:
            self._start(slot)

    def _stop_all(self) -> None:
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in live:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("ingest pool: pid %d did not stop in %.0f s: killing it", proc.pid, self.stop_timeout_s)
                proc.kill()
                proc.wait()
