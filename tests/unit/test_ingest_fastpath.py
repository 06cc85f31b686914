"""The ingest SCP's fast paths: event-driven pynetdicom reactors and the group-committing outbox.

The reactor tests run a real pynetdicom SCP (with :mod:`radstream.producers.reactor`) and a
real pynetdicom SCU over loopback; the outbox tests use a real SQLite file.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from radstream.producers import reactor
from radstream.producers.outbox import Outbox
from radstream.producers.sample_series import write_series

from radstream.devenv.process import free_port
from tests.waiting import eventually

pytestmark = pytest.mark.unit


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def _scp(tmp: Path, received: list[bytes], network_timeout: float | None = 60) -> Iterator[ThreadedAssociationServer]:
    old_chunked, old_tmp = _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(tmp)

    def on_store(event: evt.Event) -> int:
        received.append(Path(event.dataset_path).read_bytes())
        return 0x0000

    ae = AE(ae_title="FAST")
    ae.network_timeout = network_timeout
    ae.maximum_pdu_size = 0
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)
    server = ae.make_server(("127.0.0.1", free_port()), evt_handlers=[(evt.EVT_C_STORE, on_store)],
                            server_class=ThreadedAssociationServer, request_handler=reactor.RequestHandler)
    ae._servers.append(server)  # as AE.start_server does (server.shutdown() removes it)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = old_chunked, old_tmp


def _scu() -> AE:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    return ae


def test_installed_pynetdicom_has_the_shape_the_reactors_rely_on() -> None:
    assert reactor.supported(), "pynetdicom changed: review producers/reactor.py against its loops"


def test_sleep_is_plain_outside_the_reactor_threads() -> None:
    reactor._install()
    import pynetdicom.dul

    t0 = time.monotonic()
    pynetdicom.dul.time.sleep(0.02)  # not a reactor thread: a real sleep
    assert time.monotonic() - t0 >= 0.019
    calls: list[int] = []

    class ReactorThread(threading.Thread):
        def _reactor_wait(self) -> None:
            calls.append(1)

        def run(self) -> None:
            pynetdicom.dul.time.sleep(10)  # a reactor thread: its waiter instead

    t = ReactorThread()
    t.start()
    t.join(5)
    assert calls == [1] and not t.is_alive()
    assert pynetdicom.dul.time.monotonic() > 0  # everything else is the time module's


def test_event_driven_scp_stores_echoes_and_releases(tmp_path: Path) -> None:
    files = write_series(tmp_path / "series", 12, rows=64, columns=64, seed=3)
    received: list[bytes] = []
    fds_before = _open_fds()
    with _scp(tmp_path, received) as server:
        port = server.server_address[1]
        assoc = _scu().associate("127.0.0.1", port)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            assert status.Status == 0x0000
        assoc.release()
        assert assoc.is_released
        # the acceptor's threads end after the release and give back their eventfd
        eventually(lambda: not server.active_associations, 10, interval=0.01, what="the acceptor's threads end")
    assert len(received) == len(files)
    sent = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    got = {pydicom.dcmread(_as_file(b, tmp_path)).SOPInstanceUID for b in received}
    assert got == sent
    assert _open_fds() <= fds_before + 1  # nothing leaked per association (one fd of slack for pydicom)


def _as_file(data: bytes, tmp: Path) -> Path:
    p = tmp / f"got-{time.monotonic_ns()}.dcm"
    p.write_bytes(data)
    return p


def test_event_driven_scp_serves_parallel_associations(tmp_path: Path) -> None:
    files = write_series(tmp_path / "series", 24, rows=32, columns=32, seed=4)
    received: list[bytes] = []
    statuses: list[int] = []
    lock = threading.Lock()
    with _scp(tmp_path, received) as server:
        port = server.server_address[1]

        def send(share: list[Path]) -> None:
            assoc = _scu().associate("127.0.0.1", port)
            for f in share:
                st = assoc.send_c_store(pydicom.dcmread(f)).Status
                with lock:
                    statuses.append(st)
            assoc.release()

        threads = [threading.Thread(target=send, args=(files[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert statuses == [0] * len(files)
    assert len(received) == len(files)


def test_network_timeout_still_aborts_an_idle_association(tmp_path: Path) -> None:
    received: list[bytes] = []
    with _scp(tmp_path, received, network_timeout=0.5) as server:
        assoc = _scu().associate("127.0.0.1", server.server_address[1])
        assert assoc.is_established
        eventually(lambda: not assoc.is_established, 10, interval=0.05, what="the SCP's idle timer")
        assert assoc.is_aborted, "the SCP's idle timer did not fire"


def test_peer_dropping_mid_transfer_ends_the_association(tmp_path: Path) -> None:
    import socket
    import struct

    received: list[bytes] = []
    with _scp(tmp_path, received) as server:
        port = server.server_address[1]
        # associate properly, then send half a P-DATA-TF PDU and close the socket
        assoc = _scu().associate("127.0.0.1", port)
        assert assoc.is_established
        sock: Any = assoc.dul.socket.socket  # type: ignore[union-attr]
        sock.sendall(struct.pack(">BBL", 0x04, 0, 100_000) + b"\0" * 1000)
        sock.shutdown(socket.SHUT_RDWR)
        assoc.kill()
        eventually(lambda: not server.active_associations, 10, interval=0.02, what="the association ends")
    assert received == []


def test_outbox_group_commit_keeps_every_record_once_in_order(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite3")
    per_thread = 60
    seqs: dict[int, list[int]] = {}

    def writer(t: int) -> None:
        mine = seqs.setdefault(t, [])
        for i in range(per_thread):
            mine.append(ob.append("topic", f"k{t}".encode(), f"{t}:{i}".encode(), "InstanceReceived"))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ob.depth == 6 * per_thread
    for mine in seqs.values():
        assert mine == sorted(mine)  # each writer's records keep its order
    all_seqs = [s for mine in seqs.values() for s in mine]
    assert len(set(all_seqs)) == len(all_seqs)
    ob.close()
    ob = Outbox(tmp_path / "o.sqlite3")  # durable: all there after reopening, in sequence order
    recs = ob.peek(1000)
    assert [r.seq for r in recs] == sorted(all_seqs)
    by_writer: dict[str, list[int]] = {}
    for r in recs:
        t, i = r.value.decode().split(":")
        by_writer.setdefault(t, []).append(int(i))
    assert all(v == list(range(per_thread)) for v in by_writer.values())
    ob.delete([r.seq for r in recs[:100]])
    assert ob.depth == 6 * per_thread - 100
    ob.close()


def test_outbox_append_failure_reaches_every_waiting_caller(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite3")
    ob.close()  # a closed database: every append must raise, none may hang
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            ob.append("t", None, b"v", "X")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 4


def test_outbox_reserves_its_write_ahead_log_and_reuses_it(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite3")
    wal = tmp_path / "o.sqlite3-wal"
    reserved = wal.stat().st_size
    assert reserved >= 1100 * 4096  # grown once, at open
    seqs = [ob.append("t", b"k", b"v" * 900, "InstanceReceived") for _ in range(3000)]
    ob.delete(seqs)
    # appends past SQLite's checkpoint restart the log from its start: it did not keep growing
    assert wal.stat().st_size <= reserved * 1.1
    assert seqs == list(range(1, 3001))  # the scratch rows never touched the outbox's sequence
    assert ob.depth == 0 and ob.peek(10) == []
    ob.close()
