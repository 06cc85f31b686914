"""Per-association limits of the ingest SCP: instance size and byte budget, enforced while data arrives.

The C-STORE handler is the guarantee: it sees the whole instance (its file size) and refuses
one over ``dicom.max_instance_bytes``, or the one that takes its association past
``dicom.max_association_bytes``, with 0xA700 before anything is stored or published.

This module makes the same limits bite early. pynetdicom writes a received data set to a
temporary file P-DATA by P-DATA (``STORE_RECV_CHUNKED_DATASET``) in its DIMSE provider;
:class:`LimitedDIMSE` (given to each accepted association by :func:`attach`) looks at that
file's size after each P-DATA, and once the instance is over a limit it truncates the file
and drops the rest of the data set as it arrives (the peer cannot be stopped mid-message
short of an abort, so its bytes are read, but never written). The C-STORE primitive then
carries a :class:`Discarded` file, which the handler refuses at once. Only the pynetdicom
series whose internals were read for this is patched (:func:`supported`); otherwise the
handler's check alone applies.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pynetdicom
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

SUPPORTED_SERIES = "3.0."
BUDGET_ATTR = "_radstream_budget"


class AssociationBudget:
    """What one association may still send; shared by its DUL thread (writes) and handler (checks)."""

    __slots__ = ("association_limit", "exhausted", "instance_limit", "used")

    def __init__(self, instance_limit: int, association_limit: int) -> None:
        self.instance_limit = instance_limit or (1 << 62)  # 0 = unlimited
        self.association_limit = association_limit or (1 << 62)
        self.used = 0  # bytes of the instances this association has sent (whole files, as received)
        self.exhausted = False  # a C-STORE was refused for the budget: the next one aborts the association

    def over(self, size: int) -> bool:
        """True if an instance of ``size`` bytes (so far) is over either limit."""
        return size > self.instance_limit or self.used + size > self.association_limit


class _NoFlush:
    def flush(self) -> None:
        pass


_NO_FLUSH = _NoFlush()


class Discarded:
    """Stands in for pynetdicom's temporary file once an instance is over a limit: counts, never writes."""

    def __init__(self, real: Any, received: int) -> None:
        self._real = real
        self.name: str = real.name
        self.file = _NO_FLUSH
        self.received = received  # bytes of the file when it was cut, then every byte that arrived after
        real.file.truncate(0)  # free the disk at once; pynetdicom unlinks the file after the handler

    def write(self, data: bytes) -> int:
        self.received += len(data)
        return len(data)

    def close(self) -> None:
        self._real.close()


class LimitedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider; stops writing a C-STORE data set that went over the budget."""

    def receive_primitive(self, primitive: Any) -> None:
        super().receive_primitive(primitive)
        msg = self.message
        if msg is None:  # complete (or a message without a data set): the handler checks it
            return
        f: Any = msg._data_set_file
        if f is None or type(f) is Discarded:
            return
        budget: AssociationBudget | None = getattr(self.assoc, BUDGET_ATTR, None)
        if budget is None:
            return
        size = f.file.tell()
        if budget.exhausted or budget.over(size):
            msg._data_set_file = Discarded(f, size)  # type: ignore[assignment]


def supported() -> bool:
    """True if pynetdicom receives data sets the way :class:`LimitedDIMSE` relies on."""
    if not str(pynetdicom.__version__).startswith(SUPPORTED_SERIES):
        return False
    try:
        from pynetdicom.dimse_messages import DIMSEMessage

        decode = inspect.getsource(DIMSEMessage.decode_msg)
        receive = inspect.getsource(DIMSEServiceProvider.receive_primitive)
    except (OSError, TypeError, AttributeError, ImportError):
        return False
    return ("self._data_set_file.write(" in decode and "self._data_set_file.file.flush()" in decode
            and "self.message.decode_msg(" in receive)


def attach(assoc: Association, budget: AssociationBudget, early: bool) -> None:
    """Give an accepted association its budget (and, with ``early``, the DIMSE provider that enforces it)."""
    setattr(assoc, BUDGET_ATTR, budget)
    if early and type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = LimitedDIMSE


def budget_of(assoc: Association) -> AssociationBudget | None:
    budget: AssociationBudget | None = getattr(assoc, BUDGET_ATTR, None)
    return budget


def received_size(req: Any, path: Path) -> tuple[int, bool]:
    """(bytes of the instance as received, whether its data set was discarded for a limit)."""
    f = req._dataset_file
    if type(f) is Discarded:
        return f.received, True
    return path.stat().st_size, False


def certificate_identities(assoc: Association) -> list[str]:
    """Subject CN and DNS subjectAltNames of the peer's verified TLS certificate (empty without one)."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return []
    cert = getpeercert()
    if not cert:
        return []
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return names
