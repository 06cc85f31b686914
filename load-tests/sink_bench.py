"""R5: results-sink throughput against a bare COPY of the same rows, measured in one run.

The sink consumes N InferenceCompleted events from a real broker and writes them to a
migrated database (decode, stage by COPY, merge with ON CONFLICT, commit, then commit
offsets). Then exactly the rows it stored (patients, studies, series, results,
measurements, detections) are read back and written with one bare ``COPY`` per table into
a second, freshly migrated database with the same tables and indexes.

    R5 = sink rows/s / bare COPY rows/s        (goal >= 0.7)

    .venv/bin/python load-tests/sink_bench.py [--events 20000] [--batch 5000] [--processes N]

``--processes N`` runs N sink processes in one consumer group (the topic gets 2N partitions,
so each gets an equal share), as a deployment scales the sink: the sink's time is then from
the first batch any of them received to the last commit of any of them.

Private Kafka and PostgreSQL servers are started on free ports and stopped afterwards.
Consumer group join time is left out of the sink's time: the clock starts when librdkafka hands
the sink its first messages, before they are decoded, and stops when the last offsets are committed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from radstream.consumers.sinks import SinkRunner, results_spec
from radstream.consumers.sinks.runner import SinkSpec

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.db.staging import copy_rows
from radstream.devenv.kafka import KafkaServer
from radstream.devenv.postgres import PostgresServer
from radstream.devenv.process import exit_on_sigterm, free_port
from radstream.events.models import Detection, InferenceCompleted, Measurement, utcnow
from radstream.kafka.producer import EventProducer
from radstream.kafka.topics import create_topics
from radstream.settings import Settings

TABLES = ("patients", "studies", "series", "results", "measurements", "detections")


def make_events(n: int) -> list[InferenceCompleted]:
    now = utcnow()
    out = []
    for i in range(n):
        study = f"1.2.826.0.1.3680043.8.498.{i}"
        last = now - timedelta(seconds=n - i)
        out.append(InferenceCompleted(
            producer="radstream-infer/0.1.0", patient_key=f"{i % 5000:064x}", request_id=str(uuid.uuid4()),
            study_instance_uid=study, accession_number=f"ACC{i:08d}", pipeline="brain-tumour",
            pipeline_version="1", model_name="brain-tumour-ref", model_version="1", result_id=uuid.uuid4().hex,
            series_instance_uids=[f"{study}.1"],
            measurements=[Measurement("volume", "tumour", 10.0 + i % 50, "mL"),
                          Measurement("volume", "oedema", 20.0 + i % 30, "mL")],
            detections=[Detection("lesion", "enhancing", 0.9, [1.0, 2.0, 3.0, 4.0])],
            seg_uri=f"file:///store/seg/{i}.dcm", sr_uri=f"file:///store/sr/{i}.dcm",
            timings_ms={"load": 120.0, "infer": 800.0, "write": 40.0},
            started_at=last + timedelta(seconds=1), occurred_at=last + timedelta(seconds=2), last_received_at=last,
            study_date="20240101",
        ))
    return out


def settings_for(bootstrap: str, pg: PostgresServer, database: str, batch: int, prefix: str,
                 partitions: int = 3) -> Settings:
    return Settings(  # type: ignore[call-arg]
        home=Path(tempfile.gettempdir()) / "radstream-sink-bench",
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix, "default_partitions": partitions},
        postgres={"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password, "database": database,
                  "managed": False},
        sinks={"batch_size": batch},
    )


def create_db(pg: PostgresServer, name: str) -> None:
    with psycopg.connect(pg.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())


class _Clock:
    """Starts when the sink's Kafka consumer first hands over messages (before they are decoded)."""

    def __init__(self) -> None:
        self.start: float | None = None

    def attach(self, runner: SinkRunner) -> None:
        runner.consumer._consumer = _ClockedConsumer(runner.consumer._consumer, self)  # type: ignore[assignment]

    def saw(self, messages: list[Any]) -> None:
        if self.start is None and any(m.error() is None for m in messages):
            self.start = time.perf_counter()


class _ClockedConsumer:
    """A confluent-kafka consumer that tells the clock when messages first come out of it."""

    def __init__(self, inner: Any, clock: _Clock) -> None:
        self._inner, self._clock = inner, clock

    def consume(self, *args: Any, **kwargs: Any) -> list[Any]:
        got: list[Any] = self._inner.consume(*args, **kwargs)
        self._clock.saw(got)
        return got

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        msg = self._inner.poll(*args, **kwargs)
        if msg is not None:
            self._clock.saw([msg])
        return msg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def run_sink(s: Settings, n: int) -> tuple[float, float, int, int]:
    """Consume until n events are stored; returns (seconds from the first messages, seconds in DB
    writes, events, transactions)."""
    spec = results_spec(s)
    write_time = [0.0]

    def timed_write(conn: psycopg.Connection[Any], rows: Any) -> None:
        t = time.perf_counter()
        spec.write(conn, rows)
        write_time[0] += time.perf_counter() - t

    runner = SinkRunner(s, SinkSpec(spec.name, spec.topics, spec.new_rows, timed_write, spec.prepare))
    clock = _Clock()
    clock.attach(runner)
    deadline = time.monotonic() + 600
    try:
        while runner.stats.events < n and time.monotonic() < deadline:
            runner.step()
        runner.commit_written()  # the last batch's offsets (the runner commits each while the next is written)
        end = time.perf_counter()
    finally:
        runner.close()
    assert clock.start is not None, "the sink got nothing"
    return end - clock.start, write_time[0], runner.stats.events, runner.stats.batches


def _sink_process(s: Settings, n: int, stored: Any, out: Any) -> None:
    """One of several sink processes: write until the group as a whole stored ``n`` events, then
    report (first messages received, last commit done, events) on ``out``."""
    runner = SinkRunner(s, results_spec(s))
    clock = _Clock()
    clock.attach(runner)
    last_work = 0.0
    deadline = time.monotonic() + 600
    try:
        while stored.value < n and time.monotonic() < deadline:
            before = runner.stats.events
            runner.step()
            if runner.stats.events > before:
                with stored.get_lock():
                    stored.value += runner.stats.events - before
                last_work = time.perf_counter()
        t = time.perf_counter()
        runner.commit_written()
        last_work += time.perf_counter() - t  # the last batch's offset commit
    finally:
        runner.close()
    out.put((clock.start, last_work, runner.stats.events, runner.stats.conflicts, runner.stats.outages))


def run_sinks(s: Settings, n: int, processes: int) -> tuple[float, int]:
    """``processes`` sink processes in one group; returns (seconds from the first batch any of them
    received to the last commit of any of them, events)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stored = ctx.Value("i", 0)
    out = ctx.Queue()
    procs = [ctx.Process(target=_sink_process, args=(s, n, stored, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=660) for _ in procs]
    for p in procs:
        p.join(30)
    starts = [r[0] for r in reports if r[0] is not None]
    assert starts, "the sinks got nothing"
    conflicts, outages = sum(r[3] for r in reports), sum(r[4] for r in reports)
    print(f"writes rolled back by a conflict between the sinks and written again: {conflicts}; outages: {outages}")
    return max(r[1] for r in reports) - min(starts), sum(r[2] for r in reports)


def stored_rows(s: Settings) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    out: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    with connect(s, autocommit=True) as conn:
        for t in TABLES:
            cur = conn.execute(f"SELECT * FROM {t}".encode())
            cols = [d.name for d in cur.description or []]
            out[t] = (cols, [tuple(psycopg.types.json.Jsonb(v) if isinstance(v, dict) else v for v in row)
                             for row in cur.fetchall()])
    return out


def bare_copy(s: Settings, data: dict[str, tuple[list[str], list[tuple[Any, ...]]]]) -> float:
    with connect(s, autocommit=True) as conn:
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for t in TABLES:
                cols, rows = data[t]
                copy_rows(cur, t, cols, rows)
        return time.perf_counter() - t0


def _copy_share(s: Settings, share: dict[str, tuple[list[str], list[tuple[Any, ...]]]], ready: Any, out: Any) -> None:
    """One connection of the parallel bare COPY: its share of the tables, in one transaction."""
    with connect(s, autocommit=True) as conn:
        conn.execute("SELECT 1")
        ready.wait(120)
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for t in TABLES[1:]:
                cols, rows = share[t]
                if rows:
                    copy_rows(cur, t, cols, rows)
        out.put((t0, time.perf_counter()))


def bare_copy_parallel(s: Settings, data: dict[str, tuple[list[str], list[tuple[Any, ...]]]], n: int) -> float:
    """The same rows over ``n`` connections: patients first (one COPY), then each connection
    COPYs its share of the studies with everything under them, at the same time."""
    import multiprocessing as mp

    cols_r, rows_r = data["results"]
    ri, si = cols_r.index("result_id"), cols_r.index("study_instance_uid")
    share_of_study = {row[0]: k % n for k, row in enumerate(sorted(data["studies"][1]))}
    study_of = {row[ri]: share_of_study[row[si]] for row in rows_r}
    shares: list[dict[str, tuple[list[str], list[tuple[Any, ...]]]]] = [{} for _ in range(n)]
    for t in TABLES[1:]:
        cols, rows = data[t]
        if t == "studies":
            pick = [share_of_study[r[0]] for r in rows]
        elif t in ("series", "results"):
            i = cols.index("study_instance_uid")
            pick = [share_of_study[r[i]] for r in rows]
        else:
            i = cols.index("result_id")
            pick = [study_of[r[i]] for r in rows]
        for k in range(n):
            shares[k][t] = (cols, [r for r, w in zip(rows, pick, strict=True) if w == k])
    ctx = mp.get_context("spawn")
    ready, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_copy_share, args=(s, shares[k], ready, out)) for k in range(n)]
    for proc in procs:
        proc.start()
    with connect(s, autocommit=True) as conn:
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cols, rows = data["patients"]
            copy_rows(cur, "patients", cols, rows)
        patients_s = time.perf_counter() - t0
    ready.wait(120)
    spans = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(30)
    return patients_s + max(e for _, e in spans) - min(b for b, _ in spans)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=5000, help="sink batch size (the setting's default)")
    ap.add_argument("--processes", type=int, default=1, help="sink processes in one consumer group")
    args = ap.parse_args()
    partitions = 3 if args.processes == 1 else 2 * args.processes

    with tempfile.TemporaryDirectory(prefix="sink-bench-") as tmp:
        # Kafka's own default for the first rebalance of a new group (the dev broker sets 0): sink
        # processes started together are all members before partitions are handed out
        kafka = KafkaServer(Path(tmp) / "kafka", port=free_port(), controller_port=free_port(),
                            overrides={"group.initial.rebalance.delay.ms": "3000"} if args.processes > 1 else {})
        pg = PostgresServer(Path(tmp) / "pg", port=free_port())
        kafka.start()
        pg.start()
        try:
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            create_db(pg, "sink_bench")
            create_db(pg, "copy_bench")
            s_sink = settings_for(kafka.bootstrap, pg, "sink_bench", args.batch, prefix, partitions)
            s_copy = settings_for(kafka.bootstrap, pg, "copy_bench", args.batch, prefix, partitions)
            migrate(s_sink)
            migrate(s_copy)
            create_topics(s_sink)

            events = make_events(args.events)
            producer = EventProducer(s_sink, "sink-bench", **{"linger.ms": 20, "batch.size": 1_000_000})
            for e in events:
                producer.send(s_sink.topic("results"), e.study_instance_uid, e)
            assert producer.flush(120) == 0

            if args.processes == 1:
                sink_s, write_s, consumed, batches = run_sink(s_sink, args.events)
            else:
                sink_s, consumed = run_sinks(s_sink, args.events, args.processes)
                write_s, batches = float("nan"), 0
            data = stored_rows(s_sink)
            rows = sum(len(r) for _, r in data.values())
            copy_s = bare_copy(s_copy, data)
            copy_par_s: float | None = None
            if args.processes > 1:
                create_db(pg, "copy_bench_par")
                s_par = settings_for(kafka.bootstrap, pg, "copy_bench_par", args.batch, prefix, partitions)
                migrate(s_par)
                copy_par_s = bare_copy_parallel(s_par, data, args.processes)

            sink_rate = rows / sink_s
            copy_rate = rows / copy_s
            print(f"events            {consumed}  ({args.processes} sink process(es), {partitions} partitions)")
            print(f"rows stored       {rows}  ({', '.join(f'{t} {len(data[t][1])}' for t in TABLES)})")
            print(f"sink              {sink_s:.2f} s  {sink_rate:,.0f} rows/s  {consumed / sink_s:,.0f} events/s"
                  f"  (of which database writes {write_s:.2f} s, {batches} batches)")
            print(f"bare COPY         {copy_s:.2f} s  {copy_rate:,.0f} rows/s")
            print(f"R5 = sink / COPY  {sink_rate / copy_rate:.2f}   (goal >= 0.7)")
            if copy_par_s is not None:
                print(f"bare COPY over {args.processes} connections  {copy_par_s:.2f} s"
                      f"  {rows / copy_par_s:,.0f} rows/s   sink / that {copy_par_s / sink_s:.2f}")
            if args.processes == 1:
                print(f"R5 (database writes only, Kafka and decode excluded) {copy_s / write_s:.2f}")
        finally:
            pg.stop()
            kafka.stop()


if __name__ == "__main__":
    exit_on_sigterm()
    main()
