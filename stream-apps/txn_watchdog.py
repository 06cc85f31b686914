"""A deadline on the transactional producer's calls, which librdkafka does not always keep.

librdkafka (2.10 and later, open as of 2.15: confluentinc/librdkafka#5456 and #5511) can block
``send_offsets_to_transaction`` forever, past its timeout, when the group coordinator's broker
dies: the coordinator request is parked on the dead broker, whose thread was removed, and is
never retried. Seen here with a three-broker cluster: kill -9 of the broker that coordinated the
aggregator's group left it in that call for over five minutes, holding every series open.

Nothing in the process can unblock that call, and the producer is unusable while it lasts, so
the watchdog does what a crash-only service does, in place: it re-executes the process (same
pid, same command line and environment, so a supervisor's pid file stays right). The open
transaction dies with the old image and the broker aborts it; the new image restores its state
from the changelog and resumes from the committed offsets, as after any crash. Exactly-once
holds: nothing of the hung transaction was committed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def reexec() -> None:
    """Replace this process with a fresh run of the same command line (never returns)."""
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


class TxnWatchdog:
    """Runs ``on_hang`` when a guarded call outlives its timeout by ``grace_s`` seconds.

    One daemon thread; :meth:`guard` arms it around one blocking call (the calls are made by one
    thread, the loop's, one at a time)."""

    def __init__(self, grace_s: float = 30.0, on_hang: Callable[[], None] = reexec,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 1.0) -> None:
        self.grace_s = grace_s
        self.on_hang = on_hang
        self.clock = clock
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._armed: tuple[str, float] | None = None  # (what, deadline)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="txn-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @contextmanager
    def guard(self, what: str, timeout_s: float) -> Iterator[None]:
        """Arm for one call that promised to return within ``timeout_s``."""
        with self._lock:
            self._armed = (what, self.clock() + timeout_s + self.grace_s)
        try:
            yield
        finally:
            with self._lock:
                self._armed = None

    def check(self) -> bool:
        """One look (the thread's loop body): True when it fired."""
        with self._lock:
            armed = self._armed
        if armed is None or self.clock() < armed[1]:
            return False
        what, deadline = armed
        self.fired += 1
        log.critical("Kafka transactional call %s still blocked %.0fs past its timeout (librdkafka #5456/#5511: "
                     "the coordinator's broker died); restarting this process, state from the changelog",
                     what, self.clock() - deadline + self.grace_s)
        with self._lock:
            self._armed = None
        self.on_hang()
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
