"""A C-STORE SCU for files and folders: N parallel associations, statuses summarised.

Files are sent as they are on disk (the bytes after the file meta, in their own transfer
syntax; nothing is decoded or transcoded). Used by ``radstream send``, tests, demos and
load tests::

    from radstream.producers.scu import send_paths
    summary = send_paths(["study/"], host="127.0.0.1", port=11112, called_ae="RADSTREAM", associations=4)
    assert summary.failed == 0
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, build_context
from radstream.producers.requestor import associate

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True)
class SendResult:
    path: Path
    status: int | None  # DIMSE status; None when the file was not sent
    error: str | None = None
    sop_instance_uid: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or self.status & 0xF000 == 0xB000)

    @property
    def label(self) -> str:
        return f"0x{self.status:04X}" if self.status is not None else (self.error or "not sent")


@dataclass
class SendSummary:
    results: list[SendResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    bytes_sent: int = 0

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return len(self.results) - self.ok

    @property
    def statuses(self) -> Counter[str]:
        return Counter(r.label for r in self.results)

    def line(self) -> str:
        rate = len(self.results) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{len(self.results)} files, {self.ok} stored, {self.failed} failed in {self.elapsed_s:.2f}s "
            f"({rate:.1f}/s, {self.bytes_sent / 1e6 / max(self.elapsed_s, 1e-9):.1f} MB/s) [{parts}]"
        )


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    size: int


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named and every file under the folders named, in a stable order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        else:
            out.append(p)
    return out


def _describe(path: Path) -> _File | SendResult:
    try:
        meta = read_file_meta_info(path)
        return _File(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            path.stat().st_size,
        )
    except Exception as exc:
        return SendResult(path, None, f"not sent: {type(exc).__name__}")


def _batches(files: Sequence[_File]) -> Iterable[list[_File]]:
    """Consecutive runs of files that need at most MAX_CONTEXTS presentation contexts."""
    batch: list[_File] = []
    keys: set[tuple[str, str]] = set()
    for f in files:
        key = (f.sop_class, f.transfer_syntax)
        if key not in keys and len(keys) == MAX_CONTEXTS:
            yield batch
            batch, keys = [], set()
        keys.add(key)
        batch.append(f)
    if batch:
        yield batch


def set_nodelay(assoc: Any) -> None:
    """Disable Nagle on an association's socket: pynetdicom writes the command and the data set
    as separate small PDUs, which otherwise stall on delayed ACKs (~40 ms per C-STORE)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _send_batch(
    batch: list[_File], ae: AE, host: str, port: int, called_ae: str, tls: ssl.SSLContext | None,
    report: Callable[[SendResult, int], None],
) -> None:
    contexts = sorted({(f.sop_class, f.transfer_syntax) for f in batch})
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    tls_args = (tls, host) if tls is not None else None
    assoc = associate(ae, host, port, ae_title=called_ae, tls_args=tls_args)
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "association failed"
        for f in batch:
            report(SendResult(f.path, None, why, f.sop_instance), 0)
        return
    set_nodelay(assoc)
    try:
        for i, f in enumerate(batch):
            if not assoc.is_established:
                for g in batch[i:]:
                    report(SendResult(g.path, None, "association lost", g.sop_instance), 0)
                return
            try:
                rsp = assoc.send_c_store(f.path)
            except Exception as exc:
                report(SendResult(f.path, None, f"not sent: {type(exc).__name__}", f.sop_instance), 0)
                continue
            status = int(rsp.Status) if "Status" in rsp else None
            err = None if status is not None else "no response"
            report(SendResult(f.path, status, err, f.sop_instance), f.size if status is not None else 0)
    finally:
        if assoc.is_established:
            assoc.release()


def send_paths(
    paths: Iterable[str | os.PathLike[str]],
    host: str = "127.0.0.1",
    port: int = 11112,
    called_ae: str = "RADSTREAM",
    calling_ae: str = "RADSTREAM-SCU",
    associations: int = 1,
    on_result: Callable[[SendResult], None] | None = None,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 60.0,
) -> SendSummary:
    """Send every DICOM file under ``paths`` with C-STORE over ``associations`` parallel associations.

    Files that are not DICOM Part 10 files are reported as not sent. Returns a summary with
    one :class:`SendResult` per file (``status`` is the DIMSE status the SCP answered).
    """
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, never decode and re-encode
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger("pynetdicom").level))
    started = time.perf_counter()
    summary = SendSummary()
    lock = threading.Lock()

    def report(result: SendResult, size: int) -> None:
        with lock:
            summary.results.append(result)
            summary.bytes_sent += size
        if on_result is not None:
            on_result(result)

    files: list[_File] = []
    for p in collect_files(paths):
        d = _describe(p)
        if isinstance(d, SendResult):
            report(d, 0)
        else:
            files.append(d)
    n = max(1, min(associations, len(files)))
    shares = [files[i::n] for i in range(n)]

    def worker(share: list[_File]) -> None:
        ae = AE(ae_title=calling_ae)
        ae.maximum_pdu_size = 0
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        for batch in _batches(share):
            _send_batch(batch, ae, host, port, called_ae, tls, report)

    threads = [threading.Thread(target=worker, args=(s,), name=f"scu-{i}") for i, s in enumerate(shares) if s]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary.elapsed_s = time.perf_counter() - started
    return summary
