"""What a run measures: resource use per process (psutil), consumer lag per group (Kafka admin),
results and their latencies (PostgreSQL), completion delays (the series and studies topics)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from radstream.settings import Settings


@dataclass
class Sample:
    t: float
    values: dict[str, float]


@dataclass
class Sampler:
    """Calls ``probe`` every ``interval_s`` in a thread; keeps (time, {name: value}) samples."""

    probe: Callable[[], dict[str, float]]
    interval_s: float = 2.0
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a process may die between listing and reading it
                self.samples.append(Sample(time.monotonic() - self.t0, self.probe()))
            self._stop.wait(self.interval_s)


class ProcessProbe:
    """CPU % (of one core) and RSS (MiB) of each named process with its children."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.pids = pids
        self._procs: dict[int, Any] = {}

    def _proc(self, pid: int) -> Any:
        import psutil

        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = psutil.Process(pid)
            p.cpu_percent(None)
        return p

    def __call__(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            try:
                top = self._proc(pid)
                procs = [top, *top.children(recursive=True)]
                cpu = rss = 0.0
                for p in procs:
                    q = self._proc(p.pid)
                    cpu += q.cpu_percent(None)
                    rss += q.memory_info().rss
            except psutil.Error:
                continue
            out[f"cpu:{name}"] = cpu
            out[f"rss:{name}"] = rss / 2**20
        return out


class LagProbe:
    """Sum over partitions of (high watermark - committed offset) for each consumer group."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        conf = {"bootstrap.servers": settings.kafka.bootstrap_servers}
        self.admin = AdminClient(conf)
        self.consumer = Consumer({**conf, "group.id": f"bench-lag-{uuid.uuid4().hex[:6]}",
                                  "enable.auto.commit": False})
        self.prefix = settings.kafka.topic_prefix + "."

    def __call__(self) -> dict[str, float]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        groups = [g.group_id for g in self.admin.list_consumer_groups(request_timeout=5).result().valid
                  if not g.group_id.startswith("bench-lag-")]
        out: dict[str, float] = {}
        for gid in groups:
            res = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(gid)], request_timeout=5)
            lag = 0
            for fut in res.values():
                for tp in fut.result().topic_partitions or []:
                    if not tp.topic.startswith(self.prefix) or tp.offset < 0:
                        continue
                    _, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                    lag += max(0, high - tp.offset)
            out[f"lag:{gid}"] = float(lag)
        return out

    def close(self) -> None:
        self.consumer.close()


@dataclass
class ResultRow:
    pipeline: str
    study_instance_uid: str
    result_id: str
    request_id: str
    status: str
    last_received_at: datetime
    finished_at: datetime
    stored_at: datetime
    timings_ms: dict[str, float]

    @property
    def e2e_s(self) -> float:
        return (self.stored_at - self.last_received_at).total_seconds()

    @property
    def compute_s(self) -> float:
        return float(self.timings_ms.get("total", 0.0)) / 1000.0


def fetch_results(settings: Settings) -> list[ResultRow]:
    from radstream.db.connect import connect

    with connect(settings, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pipeline, study_instance_uid, result_id, request_id, status, last_received_at, finished_at, "
            "stored_at, timings_ms FROM results WHERE NOT shadow ORDER BY stored_at"
        ).fetchall()
    return [ResultRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                      r[8] if isinstance(r[8], dict) else json.loads(r[8] or "{}")) for r in rows]


@dataclass
class Completion:
    kind: str  # series | study
    uid: str
    revision: int
    delay_s: float  # completed event time - last instance received
    calling_ae: str


def fetch_completions(settings: Settings, timeout: float = 20.0) -> list[Completion]:
    """Every SeriesCompleted and StudyCompleted event so far, read by an independent consumer."""
    from radstream.events.codec import codec_for
    from radstream.events.models import SeriesCompleted, StudyCompleted
    from radstream.kafka.read_to_end import read_to_end

    codec = codec_for(settings)
    out: list[Completion] = []
    for msg in read_to_end(settings, [settings.topic("series"), settings.topic("studies")], timeout=timeout,
                           client_id="bench-read"):
        value = msg.value()
        if value is None:
            continue
        try:
            e = codec.decode(value)
        except Exception:
            continue
        if isinstance(e, SeriesCompleted):
            out.append(Completion("series", e.series_instance_uid, e.revision,
                                  (e.occurred_at - e.last_received_at).total_seconds(), e.calling_ae_title))
        elif isinstance(e, StudyCompleted):
            out.append(Completion("study", e.study_instance_uid, e.revision,
                                  (e.occurred_at - e.last_received_at).total_seconds(), e.calling_ae_title))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))
