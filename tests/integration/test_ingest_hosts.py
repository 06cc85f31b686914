"""Several ingest hosts behind a TCP load balancer: the production shape, through the real processes.

One private stack (Kafka, PostgreSQL, Triton, the aggregator, dispatcher, brain worker and results
sink as real processes) plus a second `radstream ingest` on another port, standing in for a second
host: its own write-ahead outbox, the same home (store) and the same Kafka. One brain MR study is
split across both while they run (even instances to host A, odd ones to host B, concurrently).

Rules under test: every instance is acknowledged; every SOP instance is on the instances topic
exactly once, its bytes in the store (the event's sha256); each host accepted its own half (each
outbox's sequence counts the events it wrote ahead, and both drain to empty); the series and the
study complete exactly once (one SeriesCompleted revision 0, one StudyCompleted); exactly one result
row for the study, status completed. 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from radstream.producers.scu import SendResult, send_paths

from radstream.bench.measure import ResultRow, fetch_completions, fetch_results
from radstream.bench.stack import BenchStack, StackConfig
from radstream.devenv.process import free_port, port_open
from radstream.devenv.services import ServiceSpec
from radstream.events.models import InstanceReceived
from radstream.settings import Settings
from radstream.store import path_for_uri
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dicom,
              pytest.mark.timeout(600)]

HOST_B = "ingest-b"


@dataclass
class Study:
    study_uid: str
    series_uids: list[str]
    files: list[Path]
    sops: set[str]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    from radstream.synth.generate import SynthConfig, load_truth, synthesize

    root = tmp_path_factory.mktemp("hosts-brain")
    synthesize(root, SynthConfig(seed=1801, brain_patients=1, liver_patients=0, hip_patients=0, timepoints=1,
                                 mr_shape=(24, 64, 64)))
    (s,) = load_truth(root)["studies"]
    return Study(s["study_instance_uid"], [se["series_instance_uid"] for se in s["series"]],
                 sorted(root / f for se in s["series"] for f in se["files"]),
                 {u for se in s["series"] for u in se["sop_instance_uids"]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    st = BenchStack(tmp_path_factory.mktemp("hosts-stack"),
                    StackConfig(series_quiet_s=3.0, patient_quiet_s=4.0, topic_prefix="hosts",
                                pipelines=("brain-tumour",)))
    try:
        st.up()
        yield st
    finally:
        st.down()


def _instances(settings: Settings) -> list[InstanceReceived]:
    """Every InstanceReceived on the instances topic, copies included (read to its end)."""
    from radstream.events.codec import codec_for
    from radstream.kafka.read_to_end import read_to_end

    codec = codec_for(settings)
    out = []
    for msg in read_to_end(settings, [settings.topic("instances")], timeout=30, client_id="hosts-check"):
        value = msg.value()
        if value is not None and isinstance(e := codec.decode(value), InstanceReceived):
            out.append(e)
    return out


def _outbox(path: Path) -> tuple[int, int]:
    """(events ever written ahead to this outbox: its AUTOINCREMENT sequence, events still queued)."""
    db = sqlite3.connect(path)
    try:
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        depth = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return (int(seq[0]) if seq else 0, int(depth))
    finally:
        db.close()


def _holds(check: Callable[[], None], for_s: float, interval: float = 1.0) -> None:
    """``check()`` (an assertion) keeps passing for ``for_s`` seconds: no late duplicate arrives."""
    deadline = time.monotonic() + for_s
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def test_a_study_split_across_two_ingest_hosts_completes_once(stack: BenchStack, study: Study) -> None:
    settings = stack.settings
    files, sops, study_uid, series_uids = study.files, study.sops, study.study_uid, study.series_uids
    assert len(files) == len(sops) == 24

    # host B: the same `radstream ingest` as the stack's, on its own port and with its own outbox volume
    port_a, port_b = stack.dicom_port, free_port()
    outbox_a, outbox_b = settings.outbox_path, stack.home / "host-b" / "outbox.sqlite3"
    env_b = {**stack.specs["ingest"].env, "RADSTREAM_DICOM__PORT": str(port_b),
             "RADSTREAM_INGEST__OUTBOX_PATH": str(outbox_b)}
    host_b = stack.services.process(HOST_B)
    try:
        assert stack.services.start([ServiceSpec(HOST_B, ("ingest",), env_b)]) == [HOST_B]
        eventually(lambda: port_open("127.0.0.1", port_b), 60, interval=0.2, what="host B's SCP to listen")
        assert host_b.running(), stack.log_tail(HOST_B)

        # the load balancer's split: alternate instances to A and B, both associations at once
        halves = {port_a: files[0::2], port_b: files[1::2]}
        results: dict[int, list[SendResult]] = {}
        errors: list[BaseException] = []

        def send(port: int) -> None:
            try:
                results[port] = send_paths(halves[port], port=port, calling_ae="MR01").results
            except BaseException as exc:
                errors.append(exc)

        senders = [threading.Thread(target=send, args=(p,), name=f"send-{p}") for p in halves]
        for t in senders:
            t.start()
        for t in senders:
            t.join(120)
        assert not errors, errors
        assert not any(t.is_alive() for t in senders), "a sender did not finish"
        for port, half in halves.items():
            assert len(results[port]) == len(half) == 12
            assert all(r.status == 0 for r in results[port]), [(r.path, r.status, r.error) for r in results[port]]
        acked = {r.sop_instance_uid for rs in results.values() for r in rs}
        assert acked == sops

        # each host wrote ahead exactly its half, and each drained its outbox to Kafka
        def drained() -> tuple[tuple[int, int], tuple[int, int]] | None:
            a, b = _outbox(outbox_a), _outbox(outbox_b)
            return (a, b) if a[1] == 0 and b[1] == 0 else None

        (written_a, _), (written_b, _) = eventually(drained, 30, interval=0.2, what="both outboxes to drain")
        assert (written_a, written_b) == (12, 12)
        assert f"listening on 127.0.0.1:{port_a}" in stack.services.process("ingest").log_file.read_text()
        assert f"listening on 127.0.0.1:{port_b}" in host_b.log_file.read_text()

        # every SOP instance exactly once on the instances topic, its bytes in the one store
        def all_events() -> list[InstanceReceived] | None:
            ev = _instances(settings)
            return ev if len(ev) >= len(sops) else None

        events = eventually(all_events, 60, interval=1.0, what="the 24 InstanceReceived events")
        per_sop = Counter(e.sop_instance_uid for e in events)
        assert set(per_sop) == sops and set(per_sop.values()) == {1}, per_sop
        assert len({e.event_id for e in events}) == len(events)
        for e in events:
            stored = path_for_uri(e.store_uri, settings.store_root)
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == e.sha256, e.sop_instance_uid

        # one result for the study, one completion each, and still one a quiet period later
        def result_rows() -> list[ResultRow]:
            return [r for r in fetch_results(settings) if r.study_instance_uid == study_uid]

        eventually(result_rows, 120, interval=1.0, what="the study's result row")
        # the result can come from the series' completion, before the study's (patient_quiet_s later)
        eventually(lambda: any(c.kind == "study" and c.uid == study_uid for c in fetch_completions(settings)),
                   60, interval=1.0, what="the StudyCompleted")

        def once() -> None:
            rows = [r for r in fetch_results(settings) if r.study_instance_uid == study_uid]
            assert [(r.pipeline, r.status) for r in rows] == [("brain-tumour", "completed")], rows
            done = fetch_completions(settings)
            series = sorted((c.uid, c.revision) for c in done if c.kind == "series" and c.uid in series_uids)
            assert series == sorted((u, 0) for u in series_uids), series
            studies = [(c.uid, c.revision) for c in done if c.kind == "study" and c.uid == study_uid]
            assert len(studies) == 1, studies

        _holds(once, for_s=settings.aggregator.series_quiet_s + settings.aggregator.patient_quiet_s)
        assert host_b.running() and stack.services.process("ingest").running()
    finally:
        host_b.stop(timeout=15)
