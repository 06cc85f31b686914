"""Event-driven waits for pynetdicom's acceptor reactors (no more 1 ms polling sleeps).

pynetdicom runs two threads per association, and both poll: the DUL thread sleeps 1 ms
whenever a loop found nothing to do, and the association thread sleeps 1 ms before every
look at its DIMSE message queue. With ``storescu`` sending one instance at a time, each
C-STORE crossed three such sleeps (request read, handler, response sent): ~3 ms of the
~3.2 ms a bare pynetdicom SCP spent per 33 kB instance on the development machine.

Here the same loops wait on what they are waiting for instead:

- the DUL thread blocks in ``select()`` on the association's socket and an ``eventfd``
  that :meth:`EventDUL.send_pdu` signals, so it wakes when the peer sends a PDU or when
  the association thread hands it a response;
- the association thread blocks on an event that is set when a DIMSE message or an
  ACSE primitive (A-RELEASE, A-ABORT) is queued for it.

Both still wake at least every ``IDLE_WAIT_S`` to look at their timers and kill flags,
as the original loops did on every pass. Everything else (state machine, PDU decoding,
DIMSE, ACSE, events) is pynetdicom's own code. The two loop bodies are copies of
pynetdicom 3.0.4's ``DULServiceProvider.run_reactor`` and ``Association._run_reactor``
(MIT licence) with only the waits changed; :func:`supported` refuses other versions, and
the SCP then falls back to the stock classes.

Used through public hooks only: ``AE.start_server(..., request_handler=RequestHandler)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import queue
import select
import threading
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket
from pynetdicom.transport import RequestHandler as StockRequestHandler

LOGGER = logging.getLogger("pynetdicom.dul")

PYNETDICOM_VERSION = "3.0.4"
IDLE_WAIT_S = 0.005  # timers, kill flags and events from other threads: looked at this often
RECV_CHUNK = 1 << 20


# sha256 (first 16 hex digits) of the source of each pynetdicom function copied or replaced here
COPIED_SOURCES = {
    "DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "Association._run_reactor": "f28838c5559e462a",
    "RequestHandler._create_association": "05c8d12b79863cdb",
    "AssociationSocket.recv": "6bc20a33b1b7cfe7",
    "Association.__init__": "eb07516b8009ad8f",
}


def _source_digests() -> dict[str, str]:
    funcs = (DULServiceProvider.run_reactor, Association._run_reactor, StockRequestHandler._create_association,
             AssociationSocket.recv, Association.__init__)
    return {f.__qualname__: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for f in funcs}


def supported() -> bool:
    """True if the installed pynetdicom is the version, and has the very code, copied here."""
    if str(pynetdicom.__version__) != PYNETDICOM_VERSION:
        return False
    try:
        return _source_digests() == COPIED_SOURCES
    except (OSError, TypeError):  # no source files (e.g. a zipped install): cannot check
        return False


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets ``wake`` on every put (the association thread waits on it)."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake_event = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake_event.set()


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


class EventDUL(DULServiceProvider):
    """The DUL reactor, waiting in ``select()`` instead of sleeping."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fd_lock = threading.Lock()
        self.to_user_queue = _WakingQueue(cast("FastAssociation", assoc).wake)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        with self._fd_lock:  # never write to a closed (and perhaps reused) descriptor number
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    def _wait(self) -> None:
        sock = self.socket.socket if self.socket is not None else None
        fds: list[Any] = [self._wake_fd]
        if sock is not None and self.socket is not None and self.socket._is_connected:
            fds.append(sock)
        try:
            ready, _, _ = select.select(fds, [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # socket closed under us: the next pass notices
            return
        if self._wake_fd in ready:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)

    def run_reactor(self) -> None:
        try:
            self._run_reactor_loop()
        finally:
            with self._fd_lock:
                fd, self._wake_fd = self._wake_fd, -1
                os.close(fd)

    def _run_reactor_loop(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor; `time.sleep(delay)` -> self._wait()
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        sleep = False

        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait()

            if self._kill_thread:
                break

            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class FastAssociation(Association):
    """An acceptor association whose threads wait on events instead of polling."""

    def __init__(self, ae: Any, mode: str) -> None:
        self.wake = threading.Event()
        super().__init__(ae, mode)
        self.dul = EventDUL(self)
        self.dimse.msg_queue = _WakingQueue(self.wake)
        # pynetdicom hands the timeouts to the DUL's timers when they are set: set them again
        self.acse_timeout = self.acse_timeout
        self.connection_timeout = self.connection_timeout
        self.dimse_timeout = self.dimse_timeout
        self.network_timeout = self.network_timeout

    def _idle(self) -> None:
        self.wake.clear()
        if self.dimse.msg_queue.empty() and self.dul.to_user_queue.empty():
            self.wake.wait(IDLE_WAIT_S)

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor; `time.sleep(0.001)` -> self._idle()
        self._is_paused = False
        while not self._kill:
            self._idle()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                logging.getLogger("pynetdicom.assoc").info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                logging.getLogger("pynetdicom.assoc").info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logging.getLogger("pynetdicom.assoc").error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class RequestHandler(StockRequestHandler):
    """pynetdicom's request handler, creating a :class:`FastAssociation` on a :class:`FastSocket`."""

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4 RequestHandler._create_association, with the classes above
        assoc = FastAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(FastSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(evt._HandlerBase, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc
