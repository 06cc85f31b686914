"""Hostile peers at the SCP: many idle associations (the limit, with a clear refusal), associations
that never finish, half-open TCP connections, slow-drip senders and oversized instances. The SCP
stays up and keeps answering other senders correctly."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from radstream.producers.sample_series import write_series
from radstream.producers.scu import send_paths

from radstream.devenv.process import ManagedProcess, port_open
from radstream.events.models import InstanceReceived
from radstream.settings import Settings
from tests.integration.ingest_support import child_env, consume, ingest_settings, running_ingest
from tests.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.dicom]

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _ae(title: str = "HOSTILE") -> AE:
    ae = AE(ae_title=title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _sops(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def _on_topic(s: Settings, expected: int) -> set[str]:
    return {e.sop_instance_uid for e in consume(s, s.topic("instances"), expected, timeout=30)
            if isinstance(e, InstanceReceived)}


def test_idle_associations_up_to_the_limit_then_a_clear_refusal(kafka_settings: Settings, tmp_path: Path) -> None:
    limit = 4
    s = ingest_settings(kafka_settings)
    s = s.model_copy(update={"dicom": s.dicom.model_copy(update={"max_associations": limit})})
    files = write_series(tmp_path / "ok", 3, rows=32, columns=32, seed=5)
    with running_ingest(s) as server:
        idle = [_ae(f"IDLE{i}").associate("127.0.0.1", server.port, ae_title="RADSTREAM") for i in range(limit)]
        try:
            assert all(a.is_established for a in idle)
            over = _ae("ONE-TOO-MANY").associate("127.0.0.1", server.port, ae_title="RADSTREAM")
            assert over.is_rejected, "the association over the limit was not refused"
            rj = over.acceptor.primitive
            assert rj is not None
            # A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local-limit-exceeded
            assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
            # an idle association that finally speaks is still served
            assert int(idle[0].send_c_echo().Status) == 0
        finally:
            for a in idle:
                if a.is_established:
                    a.release()
        # the slots are free again: a scanner gets through
        summary = eventually(lambda: (r := send_paths(files, port=server.port)).ok == 3 and r, timeout=15,
                             what="a send after the idle associations left")
        assert summary.statuses == {"0x0000": 3}
    assert _on_topic(s, 3) == _sops(files)


def test_associations_that_never_finish_do_not_block_others(kafka_settings: Settings, tmp_path: Path) -> None:
    s = ingest_settings(kafka_settings)
    first = write_series(tmp_path / "first", 1, rows=32, columns=32, seed=6)
    others = write_series(tmp_path / "others", 20, rows=32, columns=32, seed=7, patient_id="SYN-0002")
    with running_ingest(s) as server:
        # half-open TCP connections that never send an A-ASSOCIATE-RQ
        raw = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        # an association that stores one instance and then never releases
        _config.STORE_SEND_CHUNKED_DATASET = True
        stuck = _ae("NEVER-ENDS").associate("127.0.0.1", server.port, ae_title="RADSTREAM")
        assert stuck.is_established
        assert int(stuck.send_c_store(first[0]).Status) == 0
        try:
            t0 = time.monotonic()
            summary = send_paths(others, port=server.port, associations=2)
            assert summary.statuses == {"0x0000": 20}, summary.line()
            assert time.monotonic() - t0 < 20
            # the half-open connections are closed by the SCP (ARTIM timer, 30 s in pynetdicom)
            for sock in raw:
                sock.settimeout(45)
                assert sock.recv(1) == b"", "a connection that never associated was kept open"
        finally:
            for sock in raw:
                sock.close()
            if stuck.is_established:
                stuck.abort()
    assert _on_topic(s, 21) == _sops(first) | _sops(others)


def test_a_slow_drip_sender_is_served_and_others_are_not_slowed(kafka_settings: Settings, tmp_path: Path) -> None:
    s = ingest_settings(kafka_settings)
    drip_file = write_series(tmp_path / "drip", 1, rows=128, columns=128, seed=8)[0]  # 32 KiB of pixels
    others = write_series(tmp_path / "fast", 10, rows=32, columns=32, seed=9, patient_id="SYN-0003")
    with running_ingest(s) as server:
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = _ae("DRIP")
        assoc = ae.associate("127.0.0.1", server.port, ae_title="RADSTREAM")
        assert assoc.is_established
        dul_socket = assoc.dul.socket
        assert dul_socket is not None and dul_socket.socket is not None
        sock = dul_socket.socket
        real_send = dul_socket.send
        chunk_sent = [0]

        def drip(data: bytes) -> None:
            # 1 KiB every 50 ms: ~1.7 s for the instance, a few hundred tiny TCP segments
            view = memoryview(data)
            for i in range(0, len(view), 1024):
                sock.sendall(view[i:i + 1024])
                chunk_sent[0] += 1
                time.sleep(0.05)

        dul_socket.send = drip  # type: ignore[method-assign]
        status: list[int] = []
        t = threading.Thread(target=lambda: status.append(int(assoc.send_c_store(drip_file).Status)), daemon=True)
        t.start()
        eventually(lambda: chunk_sent[0] > 5, timeout=10, what="the drip to start")
        t0 = time.monotonic()
        summary = send_paths(others, port=server.port)
        fast_s = time.monotonic() - t0
        t.join(60)
        dul_socket.send = real_send  # type: ignore[method-assign]
        assert status == [0]
        assert chunk_sent[0] > 30
        assert summary.statuses == {"0x0000": 10}, summary.line()
        assert fast_s < 10, f"a normal sender took {fast_s:.1f}s beside the drip"
        assoc.release()
    assert _on_topic(s, 11) == _sops([drip_file]) | _sops(others)


def test_an_oversized_instance_is_streamed_to_disk_not_held_in_memory(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """A 50 MiB instance to a real `radstream ingest` process: stored, published, and the SCP's
    resident memory grows by far less than the instance (PDUs are bounded by ingest.max_pdu_size
    and the data set is written to the store as it arrives)."""
    s = ingest_settings(kafka_settings)
    big = write_series(tmp_path / "big", 1, rows=5120, columns=5120, seed=10)[0]
    size = big.stat().st_size
    proc = ManagedProcess("ingest", tmp_path / "ingest.pid", tmp_path / "ingest.log")
    proc.start([sys.executable, "-m", "radstream.cli", "ingest", "--log-level", "WARNING"], env=child_env(s))
    try:
        eventually(lambda: port_open("127.0.0.1", s.dicom.port), timeout=60, what="radstream ingest to listen")
        pid = proc.pid()
        assert pid is not None
        scp = psutil.Process(pid)
        base = scp.memory_info().rss
        peak = [base]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], scp.memory_info().rss)
                time.sleep(0.02)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        summary = send_paths([big], port=s.dicom.port)
        done.set()
        w.join()
        assert summary.statuses == {"0x0000": 1}, summary.line()
        grew = peak[0] - base
        print(f"\nSCP RSS {base / 2**20:.0f} MiB, +{grew / 2**20:.0f} MiB at peak, instance {size / 2**20:.0f} MiB")
        assert grew < size / 2, f"SCP RSS grew {grew / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB instance"
        assert proc.running()
    finally:
        proc.stop(timeout=10)
    events = [e for e in consume(s, s.topic("instances"), 1, timeout=30) if isinstance(e, InstanceReceived)]
    assert len(events) == 1 and events[0].byte_size >= size - 1024
