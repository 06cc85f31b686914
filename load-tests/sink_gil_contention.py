"""How much decoding next to the results writer slows its database writes, in a thread or a process.

The results sink decodes the next batch on its consumer thread while its writer thread writes
the current one. This measures the writer alone: the same 20,000 results (4 batches of 5,000,
rows prepared beforehand) written to a fresh database, with nothing else running, with a
thread that decodes events and builds their rows at the sink's rate (1,000 events every
75 ms: 20,000 in the ~1.5 s the writes take), and with the same decoding in another process.
A thread shares the interpreter lock with the writer; a process shares only the CPUs.

    .venv/bin/python load-tests/sink_gil_contention.py [--repeats 3]

A private PostgreSQL server is started on a free port and stopped afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from radstream.consumers.sinks.runner import tune_interpreter
from sink_bench import create_db, make_events, settings_for

from radstream.db.connect import connect
from radstream.db.migrate import migrate
from radstream.db.results_writer import ResultRows, prepare_connection, write_result_rows
from radstream.devenv.postgres import PostgresServer
from radstream.devenv.process import exit_on_sigterm, free_port
from radstream.events.serde import SingleObjectCodec

BATCH, BATCHES, CHUNK = 5000, 4, 1000


def decode_at_rate(stop: Any, every_s: float) -> None:
    """Decode CHUNK events and build their rows every ``every_s`` seconds until ``stop`` is set."""
    codec = SingleObjectCodec()
    blobs = [codec.encode(e) for e in make_events(CHUNK)]
    while not stop.is_set():
        t = time.perf_counter()
        rows = ResultRows()
        for blob in blobs:
            rows.add(codec.decode(blob))
        rows.seal()
        time.sleep(max(0.0, every_s - (time.perf_counter() - t)))


def one_run(pg: PostgresServer, mode: str, every_s: float) -> float:
    create_db(pg, "contention")
    s = settings_for("127.0.0.1:1", pg, "contention", BATCH, "x")
    migrate(s)
    events = make_events(BATCH * BATCHES)
    batches = []
    for i in range(BATCHES):
        rows = ResultRows()
        for e in events[i * BATCH:(i + 1) * BATCH]:
            rows.add(e)
        rows.seal()
        batches.append(rows)
    stop: Any
    helper: threading.Thread | Any | None = None
    if mode == "thread":
        stop = threading.Event()
        helper = threading.Thread(target=decode_at_rate, args=(stop, every_s), daemon=True)
    elif mode == "process":
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        helper = ctx.Process(target=decode_at_rate, args=(stop, every_s), daemon=True)
    else:
        stop = threading.Event()
    with connect(s, autocommit=True) as conn:
        prepare_connection(conn)
        if helper is not None:
            helper.start()
            time.sleep(1.0)  # the helper is decoding (a spawned process has imported radstream)
        t0 = time.perf_counter()
        for rows in batches:
            write_result_rows(conn, rows)
        took = time.perf_counter() - t0
    stop.set()
    if helper is not None:
        helper.join(10)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every-ms", type=float, default=75.0, help="the helper decodes 1,000 events this often")
    args = ap.parse_args()
    tune_interpreter()  # as in a sink process (1 ms interpreter-lock slices, collector tuned)
    took: dict[str, list[float]] = {"alone": [], "thread": [], "process": []}
    with tempfile.TemporaryDirectory(prefix="sink-gil-") as tmp:
        pg = PostgresServer(Path(tmp) / "pg", port=free_port())
        pg.start()
        try:
            for _ in range(args.repeats):
                for mode in took:
                    took[mode].append(one_run(pg, mode, args.every_ms / 1000))
        finally:
            pg.stop()
    print(f"{BATCHES} batches of {BATCH} results written (s), decoding {CHUNK} events every {args.every_ms:.0f} ms:")
    for mode, values in took.items():
        print(f"  {mode:8} {', '.join(f'{v:.2f}' for v in values)}")
    alone = statistics.median(took["alone"])
    for mode in ("thread", "process"):
        print(f"  {mode} / alone (medians): {statistics.median(took[mode]) / alone:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    exit_on_sigterm()
    main()
