"""Scanners sending on their own schedule: one thread per calling AE title, C-STORE through
:func:`radstream.producers.scu.send_paths`, and a retry of what the SCP did not acknowledge
(as a modality's queue would), so a crashed SCP delays instances but loses none."""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from radstream.bench.workload import Exam, Scanner


@dataclass
class InstanceRecord:
    sop_instance_uid: str
    study_instance_uid: str
    calling_ae: str
    size: int
    attempts: int = 0
    first_sent: float | None = None
    acked_at: float | None = None
    last_status: str = ""


@dataclass
class Ledger:
    """What was sent and acknowledged (monotonic times, relative to ``t0``)."""

    t0: float = field(default_factory=time.monotonic)
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self) -> set[str]:
        with self.lock:
            return {k for k, r in self.instances.items() if r.acked_at is not None}

    def sent(self) -> set[str]:
        with self.lock:
            return {k for k, r in self.instances.items() if r.attempts > 0}

    def ack_times(self) -> list[float]:
        with self.lock:
            return sorted(r.acked_at for r in self.instances.values() if r.acked_at is not None)

    def bytes_acked(self) -> int:
        with self.lock:
            return sum(r.size for r in self.instances.values() if r.acked_at is not None)


class ScannerFleet:
    """Send every scanner's exams at their due times; :meth:`run` returns when all are acknowledged
    or ``give_up_s`` after the last due time."""

    def __init__(self, scanners: list[Scanner], port: int, called_ae: str = "RADSTREAM",
                 retry_s: float = 1.0, give_up_s: float = 180.0, ledger: Ledger | None = None,
                 time_offset_s: float = 0.0) -> None:
        self.scanners = scanners
        self.port = port
        self.called_ae = called_ae
        self.retry_s = retry_s
        self.give_up_s = give_up_s
        self.ledger = ledger or Ledger()
        self.offset = time_offset_s
        self.stop_event = threading.Event()
        for sc in scanners:
            for ex in sc.exams:
                for path, sop in zip(ex.files, ex.sop_instance_uids, strict=True):
                    self.ledger.instances[sop] = InstanceRecord(sop, ex.study_instance_uid, sc.calling_ae,
                                                                path.stat().st_size)

    def exams(self) -> list[Exam]:
        return [ex for sc in self.scanners for ex in sc.exams]

    def run(self) -> None:
        threads = [threading.Thread(target=self._scanner, args=(sc,), name=f"scanner-{sc.calling_ae}", daemon=True)
                   for sc in self.scanners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="scanner-fleet", daemon=True)
        t.start()
        return t

    def _now(self) -> float:
        return time.monotonic() - self.ledger.t0

    def _scanner(self, sc: Scanner) -> None:
        from radstream.producers.scu import SendResult, send_paths

        queue: list[tuple[float, int, Path, str]] = []
        n = 0
        for ex in sc.exams:
            for due, path, sop in zip(ex.due_times(), ex.files, ex.sop_instance_uids, strict=True):
                heapq.heappush(queue, (due + self.offset, n, path, sop))
                n += 1
        last_due = max((q[0] for q in queue), default=0.0)
        while queue and not self.stop_event.is_set():
            wait = queue[0][0] - self._now()
            if wait > 0 and self.stop_event.wait(wait):
                break
            now = self._now()
            batch = []
            while queue and queue[0][0] <= now:
                batch.append(heapq.heappop(queue))
            by_path = {b[2]: b for b in batch}
            with self.ledger.lock:
                for _, _, _, sop in batch:
                    rec = self.ledger.instances[sop]
                    rec.attempts += 1
                    if rec.first_sent is None:
                        rec.first_sent = now

            def stamp(r: SendResult, by_path: dict[Path, tuple[float, int, Path, str]] = by_path) -> None:
                item = by_path.get(r.path)
                if item is None:
                    return
                with self.ledger.lock:
                    rec = self.ledger.instances[item[3]]
                    rec.last_status = r.label
                    if r.ok and rec.acked_at is None:
                        rec.acked_at = self._now()

            summary = send_paths([b[2] for b in batch], port=self.port, called_ae=self.called_ae,
                                 calling_ae=sc.calling_ae, associations=1, timeout_s=30.0, on_result=stamp)
            done = self._now()
            answered = set()
            for r in summary.results:
                item = by_path.get(r.path)
                if item is None:
                    continue
                answered.add(r.path)
                if not r.ok:
                    self._requeue(queue, item, done, last_due)
            for path, item in by_path.items():
                if path not in answered:
                    self._requeue(queue, item, done, last_due)

    def _requeue(self, queue: list[tuple[float, int, Path, str]], item: tuple[float, int, Path, str],
                 now: float, last_due: float) -> None:
        if now - last_due > self.give_up_s:
            return
        heapq.heappush(queue, (now + self.retry_s, item[1], item[2], item[3]))
