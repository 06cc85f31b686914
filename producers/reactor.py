"""Event-driven waits for pynetdicom's acceptor reactors (no more 1 ms polling sleeps).

pynetdicom runs two threads per association, and both poll: the DUL thread sleeps 1 ms
whenever a loop found nothing to do, and the association thread sleeps 1 ms before every
look at its DIMSE message queue. With ``storescu`` sending one instance at a time, each
C-STORE crossed three such sleeps (request read, handler, response sent): ~3 ms of the
~3.2 ms a bare pynetdicom SCP spent per 33 kB instance on the development machine.

Here the same loops wait on what they are waiting for instead. pynetdicom's own loops run
unchanged; what changes is what their ``time.sleep`` does in the threads of our
associations:

- the ``time`` that pynetdicom's ``dul`` and ``association`` modules see is
  :data:`WAITING_TIME`: the real module, except that ``sleep`` in the thread of one of our
  DUL or association objects (each is its own thread) calls that object's waiter instead;
  every other thread sleeps as before;
- the DUL thread's waiter blocks in ``select()`` on the association's socket and an
  ``eventfd`` that :meth:`EventDUL.send_pdu` signals, so it wakes when the peer sends a PDU
  or when the association thread hands it a response;
- the association thread's waiter blocks on an event that is set when a DIMSE message or an
  ACSE primitive (A-RELEASE, A-ABORT) is queued for it.

Both waiters still return at least every ``IDLE_WAIT_S``, so the loops look at their timers
and kill flags as before; an early return only makes a loop look again sooner. The
association, its DUL and its socket are pynetdicom's, created by pynetdicom's own request
handler, then given the subclasses below (which add the wake-ups and a socket read in large
chunks). Used through public hooks only: ``AE.start_server(..., request_handler=RequestHandler)``;
:func:`supported` checks that the installed pynetdicom still has the shape relied on, and the
SCP falls back to the stock classes otherwise.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import queue
import select
import threading
import time
import types
import weakref
from typing import Any

import pynetdicom
import pynetdicom.association
import pynetdicom.dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket
from pynetdicom.transport import RequestHandler as StockRequestHandler

SUPPORTED_SERIES = "3.0."  # pynetdicom versions whose loops were read for this module
IDLE_WAIT_S = 0.005  # timers, kill flags and events from other threads: looked at this often
RECV_CHUNK = 1 << 20

class _WaitingTime(types.ModuleType):
    """The ``time`` module, with ``sleep`` handed to the current thread's registered waiter."""

    def __init__(self) -> None:
        super().__init__("time")
        self.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("__") and k != "sleep"})

    def sleep(self, seconds: float) -> None:
        # pynetdicom's DUL and association objects are the threads their loops run in
        waiter = getattr(threading.current_thread(), "_reactor_wait", None)
        if waiter is None:
            time.sleep(seconds)
        else:
            waiter()


WAITING_TIME = _WaitingTime()
_install_lock = threading.Lock()


def _install() -> None:
    """Let pynetdicom's DUL and association loops sleep through :data:`WAITING_TIME` (idempotent)."""
    with _install_lock:
        for module in (pynetdicom.dul, pynetdicom.association):
            if module.time is not WAITING_TIME:
                module.time = WAITING_TIME  # type: ignore[attr-defined]


def supported() -> bool:
    """True if the installed pynetdicom has the shape this module relies on: the 3.0 series,
    whose DUL and association reactor loops sleep through their module's ``time``."""
    if not str(pynetdicom.__version__).startswith(SUPPORTED_SERIES):
        return False
    try:
        loops = (DULServiceProvider.run_reactor, Association._run_reactor)
        sleeping = all("time.sleep(" in inspect.getsource(f) for f in loops)
    except (OSError, TypeError, AttributeError):  # no source files (e.g. a zipped install): cannot check
        return False
    return (sleeping and getattr(pynetdicom.dul, "time", None) in (time, WAITING_TIME)
            and getattr(pynetdicom.association, "time", None) in (time, WAITING_TIME)
            and hasattr(StockRequestHandler, "_create_association"))


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets ``wake`` on every put (the association thread waits on it)."""

    def __init__(self, wake: threading.Event, items: list[Any]) -> None:
        super().__init__()
        self._wake_event = wake
        for item in items:
            super().put(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake_event.set()


def _waking(q: queue.Queue[Any], wake: threading.Event) -> _WakingQueue:
    with q.mutex:
        items = list(q.queue)
    return _WakingQueue(wake, items)


class FastSocket(AssociationSocket):
    """Reads a PDU with a few large ``recv_into`` calls instead of 4 kB ``recv`` calls."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        nr_read = 0
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], min(nr_bytes - nr_read, RECV_CHUNK))
            if not n:  # connection closed: return what was read (pynetdicom checks the length)
                del view
                del buf[nr_read:]
                return buf
            nr_read += n
        return buf


class _WakeFd:
    """An ``eventfd`` that is closed once, whoever gets there first (never a reused number)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.lock = threading.Lock()

    def signal(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.eventfd_write(self.fd, 1)

    def drain(self) -> None:
        with self.lock, contextlib.suppress(BlockingIOError, OSError):
            if self.fd >= 0:
                os.eventfd_read(self.fd)

    def close(self) -> None:
        with self.lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL; where its reactor would sleep, it waits in ``select()``."""

    _wake: _WakeFd

    def _attach(self, wake: threading.Event) -> None:
        """Add the wake-ups to a DUL built by pynetdicom (before its thread starts)."""
        self._wake = _WakeFd()
        weakref.finalize(self, self._wake.close)  # also for associations that never reach their reactor
        self.to_user_queue = _waking(self.to_user_queue, wake)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake.signal()

    def _reactor_wait(self) -> None:
        fd = self._wake.fd
        if fd < 0:  # closed: the association is over and this loop about to notice
            time.sleep(IDLE_WAIT_S)
            return
        fds: list[Any] = [fd]
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None and self.socket is not None and self.socket._is_connected:
            fds.append(sock)
        try:
            ready, _, _ = select.select(fds, [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # socket or eventfd closed under us: the next pass notices
            return
        if fd in ready:
            self._wake.drain()


class FastAssociation(Association):
    """pynetdicom's acceptor association; where its reactor would sleep, it waits for messages."""

    wake: threading.Event

    def _attach(self) -> None:
        self.wake = threading.Event()
        self.dimse.msg_queue = _waking(self.dimse.msg_queue, self.wake)

    def _reactor_wait(self) -> None:
        self.wake.clear()
        if self.dimse.msg_queue.empty() and self.dul.to_user_queue.empty():
            self.wake.wait(IDLE_WAIT_S)

    def _run_reactor(self) -> None:
        try:
            super()._run_reactor()
        finally:  # the DUL has been told to stop: its wake-up descriptor is not needed any more
            dul = self.dul
            if isinstance(dul, EventDUL):
                dul._wake.close()


def make_fast(assoc: Association) -> Association:
    """Give an acceptor association pynetdicom just built (not started) the event-driven waits."""
    _install()
    assoc.__class__ = FastAssociation
    assert isinstance(assoc, FastAssociation)
    assoc._attach()
    assoc.dul.__class__ = EventDUL
    assert isinstance(assoc.dul, EventDUL)
    assoc.dul._attach(assoc.wake)
    if type(assoc.dul.socket) is AssociationSocket:
        assoc.dul.socket.__class__ = FastSocket
    return assoc


class RequestHandler(StockRequestHandler):
    """pynetdicom's request handler; its associations get :func:`make_fast`."""

    def _create_association(self) -> Association:
        return make_fast(super()._create_association())
