"""Where an ingest SCP's time goes, per instance: an in-process breakdown (investigation tool).

Runs `IngestServer` in this process (one private Kafka broker, warmed up), sends with dcmtk's
`storescu` (TCP_NODELAY=1) and wraps the handler's steps with timers: header parse, hashing,
fsyncs, event build, publish. Prints wall and CPU per instance (this process, and the broker)
and the mean time of each step per instance. Steps run in parallel threads overlap, so they do
not add up to the wall time. Configurations, run one after another for each case:

    after, after-nopub     the current design (event-driven reactors, write-ahead outbox)
    before, before-nopub   the design before: pynetdicom's polling loops, waiting for Kafka's
                           ack, no hashing/fsync overlap

    .venv/bin/python load-tests/ingest_breakdown.py --ct 500 --mr 100 ct:1 mr:1 ct:4
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import radstream.producers.publisher as pub_mod
import radstream.producers.scp as scp_mod
from radstream.producers.sample_series import write_series

import radstream.store as store_mod
from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import exit_on_sigterm, free_port
from radstream.kafka.topics import create_topics
from radstream.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from ingest_bench import warm_up_kafka

SPENT: dict[str, float] = collections.defaultdict(float)
CONFIGS: dict[str, dict[str, Any]] = {
    "after": {},
    "after-nopub": {"publish": False},
    "before": {"event_driven_reactor": False, "publish_mode": "kafka"},
    "before-nopub": {"event_driven_reactor": False, "publish": False},
}


def timed(owner: Any, name: str, label: str) -> None:
    fn = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


class Inline:
    """Runs submitted calls at once: the handler's steps one after another, as before."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


def send(port: int, files: list[Path], associations: int) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", "RADSTREAM", "-xe", "127.0.0.1", str(port),
                               *map(str, files[i::associations])], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(associations)]
    for p in procs:
        p.wait()
    return time.perf_counter() - started


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", default=["ct:1", "mr:1"], help="ct|mr:associations")
    ap.add_argument("--ct", type=int, default=500)
    ap.add_argument("--mr", type=int, default=100)
    ap.add_argument("--configs", default="before,before-nopub,after,after-nopub")
    args = ap.parse_args()

    timed(scp_mod, "read_header", "header parse + structure check")
    timed(scp_mod, "hash_file", "sha256 (reads the file back)")
    timed(store_mod, "_fsync_dir", "fsync of the directory")
    timed(os, "fsync", "fsync (file and directory)")
    timed(store_mod.ContentStore, "add_file", "store: link + fsyncs")
    timed(scp_mod.IngestServer, "_event", "event build")
    timed(pub_mod.Publisher, "publish", "publish (encode + outbox or ack)")
    timed(scp_mod.IngestServer, "_on_store", "C-STORE handler, total")

    work = Path(tempfile.mkdtemp(prefix="ingest-breakdown-"))
    kafka = KafkaServer(work / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    try:
        data = {"ct": write_series(work / "ct", args.ct, modality="CT", rows=128, columns=128, seed=2),
                "mr": write_series(work / "mr", args.mr, modality="MR", rows=512, columns=512, seed=1)}
        base = Settings(home=work / "topics", kafka={"bootstrap_servers": kafka.bootstrap, "topic_prefix": "bd"})
        create_topics(base)
        warm_up_kafka(base)
        broker = int((work / "kafka" / "kafka.pid").read_text().split()[0])
        for case in args.cases:
            kind, n = case.split(":")
            files, associations = data[kind], int(n)
            for config in args.configs.split(","):
                ingest = {"metrics_port": 0, **CONFIGS[config]}
                s = Settings(home=work / config, kafka=base.kafka,
                             dicom={"port": free_port(), "bind_address": "127.0.0.1", "max_associations": 64},
                             ingest=ingest)
                shutil.rmtree(s.home, ignore_errors=True)
                server = scp_mod.IngestServer(s)
                if config.startswith("before"):
                    server._io = Inline()  # type: ignore[assignment,unused-ignore]
                server.start()
                try:
                    send(server.port, files[:4], 1)
                    SPENT.clear()
                    cpu, kcpu = time.process_time(), cpu_of(broker)
                    elapsed = send(server.port, files, associations)
                    cpu, kcpu = time.process_time() - cpu, cpu_of(broker) - kcpu
                finally:
                    server.stop()
                k = len(files)
                print(f"== {case} {config:13s} {k / elapsed:7.1f} inst/s | per instance:"
                      f" wall {elapsed / k * 1e3:.2f} ms, SCP CPU {cpu / k * 1e3:.2f} ms,"
                      f" broker CPU {kcpu / k * 1e3:.2f} ms", flush=True)
                for label, spent in sorted(SPENT.items(), key=lambda kv: -kv[1]):
                    print(f"     {label:34s} {spent / k * 1e3:6.3f} ms")
    finally:
        kafka.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    exit_on_sigterm()
    main()
