"""Exclusive leases on outbox files: an advisory ``flock`` on a lock file beside each outbox.

Guarantees: while a :class:`OutboxLease` is held, no other process holding a lease obtained
through this module has the same outbox (``flock`` is exclusive and per open file). The
kernel releases the lease when its holder dies in any way (kill -9 included), so a
successor can take it at once. Lock files are never deleted (deleting one would let two
processes lock two different files of the same name).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType


def lock_path_for(outbox: Path) -> Path:
    """The lock file of ``outbox``: ``<outbox>.lock`` beside it."""
    return outbox.with_name(outbox.name + ".lock")


class OutboxLease:
    """An exclusive lease on one outbox file, held until :meth:`release` (or the process ends)."""

    def __init__(self, outbox: Path, fd: int) -> None:
        self.outbox = outbox
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, outbox: Path) -> OutboxLease | None:
        """The lease if nobody holds it now, else None (never waits)."""
        lock = lock_path_for(outbox)
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # who holds it, for an operator reading the file
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return cls(outbox, fd)

    @classmethod
    def acquire(cls, outbox: Path, stop: threading.Event, poll_s: float = 0.2) -> OutboxLease | None:
        """Wait for the lease (e.g. while a survivor finishes draining this outbox); None if ``stop`` is set first."""
        while True:
            lease = cls.try_acquire(outbox)
            if lease is not None:
                return lease
            if stop.wait(poll_s):
                return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lease back (idempotent). Closing the descriptor drops the lock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> OutboxLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
