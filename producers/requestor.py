"""Requestor associations whose reactor cannot take the response a ``send_*`` call waits for.

pynetdicom's association thread keeps running its reactor loop while the association is
established. Before a ``send_c_store`` / ``send_c_echo`` / … it pauses that loop: it clears
the reactor's checkpoint event, then waits until the loop's ``_is_paused`` flag is true. The
loop sets the flag *before* it waits on the checkpoint and clears it *after*; when the
checkpoint was still set, the flag is briefly true while the loop is already on its way to
look at the DIMSE queue. A ``send_*`` call that sees the flag in that moment sends its
request, and a fast peer's response reaches the queue before the loop looks: the loop takes
it, logs "Received unexpected C-xxx service message", and the caller waits until its DIMSE
timeout, then aborts the association (pynetdicom issue #875). Against radstream's own SCP,
which answers within ~100 µs, about one C-STORE + C-ECHO pair in a few hundred hit it.

:func:`guard` makes ``_is_paused`` mean what the ``send_*`` methods take it to mean: while
the checkpoint is cleared it is true only once the loop is actually blocked on it. It
changes the class of the association's checkpoint event (to one that counts its blocked
waiters) and of the association (to one whose ``_is_paused`` is a property); pynetdicom's
own loop and ``send_*`` methods run unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association


class CountingEvent(threading.Event):
    """A :class:`threading.Event` that knows how many threads are blocked in :meth:`wait`.

    A waiter stops counting when :meth:`set` releases it, not when it next runs: after
    ``set(); clear()`` in quick succession the released thread is not blocked any more, even
    if it has not yet woken up.
    """

    _blocked: int

    def blocked(self) -> int:
        return getattr(self, "_blocked", 0)

    def set(self) -> None:
        with self._cond:  # type: ignore[attr-defined]
            self._flag = True
            self._blocked = 0
            self._cond.notify_all()  # type: ignore[attr-defined]

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:  # type: ignore[attr-defined]
            if self._flag:
                return True
            self._blocked = self.blocked() + 1
            signaled = bool(self._cond.wait(timeout))  # type: ignore[attr-defined]
            if not signaled:  # timed out: set() did not release it
                self._blocked = max(0, self._blocked - 1)
            return signaled


class GuardedAssociation(Association):
    """pynetdicom's requestor association; ``_is_paused`` is only true when the reactor is."""

    _reactor_checkpoint: CountingEvent

    @property
    def _is_paused(self) -> bool:
        flag = bool(self.__dict__.get("_is_paused_flag", False))
        if not flag:
            return False
        checkpoint = self._reactor_checkpoint
        # set: nothing is pausing the loop (kill(), or no send in progress); cleared: a
        # send_* call is pausing it, and it is paused only once it is blocked on the event
        return checkpoint.is_set() or checkpoint.blocked() > 0 or not self.is_alive()

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        self.__dict__["_is_paused_flag"] = value


def guard(assoc: Association) -> Association:
    """Give a requestor association the race-free pause (before its first ``send_*`` call)."""
    if isinstance(assoc, GuardedAssociation):
        return assoc
    assoc._reactor_checkpoint.__class__ = CountingEvent
    assoc.__class__ = GuardedAssociation  # from here the loop's writes go to the property
    # the flag as the loop last wrote it (it writes it again on every pass)
    assoc.__dict__.setdefault("_is_paused_flag", bool(assoc.__dict__.pop("_is_paused", False)))
    return assoc


def associate(ae: ApplicationEntity, addr: str, port: int, **kwargs: Any) -> Association:
    """``ae.associate(...)``, returning a :func:`guard`-ed association."""
    return guard(ae.associate(addr, port, **kwargs))
