"""Ingest benchmarks (R1, R2, peak RSS), measured side by side in one run.

R1: instances/s of `radstream ingest` / dcmtk `storescp` (writing files) / Orthanc (local config),
    same `storescu` sender and data: 0.5 MB MR slices and 33 kB CT slices, 1 and 4 associations
    (4 = four concurrent storescu processes, each sending a quarter of the files).
R2: radstream with Kafka publishing / radstream with publishing switched off (--no-publish).
RSS: peak resident memory (VmHWM) of the radstream SCP while receiving ~1 GB of MR slices.

Everything runs on loopback with free ports and temporary folders; Kafka is a private KRaft
broker started here. TCP_NODELAY=1 is set for dcmtk. Usage:

    .venv/bin/python load-tests/ingest_bench.py --mr 200 --ct 1000 --rss-gb 1.0

--processes N adds `radstream ingest --processes N` (the ingest pool: N SCP processes on one port with
SO_REUSEPORT, publishing on) and a table of the pool vs the one process and vs Orthanc, with how the
kernel spread each case's associations over the pool's processes (from their /metrics). To compare
only these on 4 associations:

    .venv/bin/python load-tests/ingest_bench.py --mr 100 --ct 400 --rss-gb 0 --associations 4 \
        --processes 2 --only radstream,radstream-pool,orthanc

--floor adds two bare pynetdicom SCPs that discard every data set (load-tests/bare_scp.py):
what any pynetdicom SCP costs before it does any work, with pynetdicom's own polling loops
and with radstream's event-driven ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from radstream.producers.sample_series import write_series

from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import ManagedProcess, exit_on_sigterm, free_port, port_open, wait_until
from radstream.kafka.topics import create_topics
from radstream.settings import Settings

Server = tuple[Callable[[], AbstractContextManager[int]], int, str]  # start(), port, called AE title
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
RADSTREAM = str(Path(sys.executable).parent / "radstream")


def storescu(files: list[Path], port: int, aec: str, associations: int) -> float:
    """Send ``files`` with ``associations`` concurrent storescu processes; return the wall time."""
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", aec, "-xe", "127.0.0.1", str(port),
                          *map(str, share)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for share in shares
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


@contextmanager
def running(argv: list[str], port: int, work: Path, name: str, env: dict[str, str] | None = None) -> Iterator[int]:
    proc = ManagedProcess(name, work / f"{name}.pid", work / f"{name}.log")
    pid = proc.start(argv, env=env)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 60, what=f"{name} on {port}")
        yield pid
    finally:
        proc.stop(timeout=20)


def dcmtk_server(work: Path) -> Server:
    port = free_port()
    out = work / "storescp-out"

    @contextmanager
    def start() -> Iterator[int]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        with running(["storescp", "--fork", "+xa", "-od", str(out), str(port)], port, work, "storescp",
                     env=DCMTK_ENV) as pid:
            yield pid

    return start, port, "STORESCP"


def orthanc_server(work: Path) -> Server:
    port, http = free_port(), free_port()
    storage = work / "orthanc-db"

    @contextmanager
    def start() -> Iterator[int]:
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir(parents=True)
        config = {
            "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "StorageCompression": False, "Plugins": [], "HttpServerEnabled": True,
            "DicomServerEnabled": True, "DicomThreadsCount": 4, "UnknownSopClassAccepted": True,
        }
        cfg = work / "orthanc.json"
        cfg.write_text(json.dumps(config))
        with running(["Orthanc", str(cfg)], port, work, "orthanc", env=DCMTK_ENV) as pid:
            yield pid

    return start, port, "ORTHANC"


def radstream_server(work: Path, bootstrap: str, publish: bool, processes: int = 1, metrics_port: int = 0) -> Server:
    """`radstream ingest`; ``processes`` > 1: the pool, its process i with /metrics on ``metrics_port`` + i."""
    port = free_port()
    home = work / ("rs-home" if publish else "rs-home-nopub")
    if processes > 1:
        home = home.with_name(f"{home.name}-pool{processes}")

    @contextmanager
    def start() -> Iterator[int]:
        shutil.rmtree(home, ignore_errors=True)
        env = {**os.environ, "RADSTREAM_HOME": str(home), "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
               "RADSTREAM_KAFKA__TOPIC_PREFIX": "bench", "RADSTREAM_DICOM__PORT": str(port),
               "RADSTREAM_DICOM__BIND_ADDRESS": "127.0.0.1", "RADSTREAM_INGEST__METRICS_PORT": str(metrics_port),
               "RADSTREAM_DICOM__MAX_ASSOCIATIONS": "64",
               # a benchmark machine: a random site secret under the home, not the production refusal
               "RADSTREAM_ENVIRONMENT": os.environ.get("RADSTREAM_ENVIRONMENT", "development")}
        argv = [RADSTREAM, "ingest", "--log-level", "WARNING", *([] if publish else ["--no-publish"])]
        if processes > 1:
            argv += ["--processes", str(processes)]
        with running(argv, port, work, "radstream-ingest", env=env) as pid:
            if processes > 1:  # the port opens with the first process: wait for all of them
                wait_until(lambda: len(pool_split(metrics_port, processes)) == processes, 60, what="the pool")
            yield pid

    return start, port, "RADSTREAM"


def bare_pynetdicom_server(work: Path, event_driven: bool) -> Server:
    """The floor: a pynetdicom SCP that receives each data set to a file and discards it."""
    port = free_port()
    incoming = work / f"bare-{event_driven}"

    @contextmanager
    def start() -> Iterator[int]:
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        argv = [sys.executable, str(Path(__file__).parent / "bare_scp.py"), str(port), str(incoming),
                *(["--event-driven"] if event_driven else [])]
        with running(argv, port, work, f"bare-scp-{event_driven}") as pid:
            yield pid

    return start, port, "BARE"


def pool_split(metrics_port: int, processes: int) -> list[float]:
    """Instances each pool process stored so far (from its /metrics); only the processes that answer."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for i in range(processes):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + i}/metrics", timeout=5) as rsp:
                text = rsp.read().decode()
        except OSError:
            continue
        out.append(sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name == "radstream_ingest_instances_total"))
    return out


def consecutive_free_ports(n: int) -> int:
    """A port p with p .. p+n-1 free now."""
    import socket

    for _ in range(100):
        p = free_port()
        socks = []
        try:
            for i in range(1, n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def warm_up_kafka(settings: Settings, records: int = 20_000) -> None:
    """Give the freshly started broker's JVM its warm-up (JIT) before anything is measured.

    A cold broker spent up to ~7 ms of CPU per instance during the first case (on 2 shared
    cores), which a long-running broker does not. Records go to a topic nobody reads, with the
    ingest producer's settings (idempotent, acks=all), in small requests as the SCP sends them.
    """
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{settings.kafka.topic_prefix}.warmup"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 0})
    value = b"\0" * 900
    for i in range(records):
        producer.produce(topic, value=value, key=str(i % 64).encode())
        if i % 20 == 19:
            producer.flush(30)
    producer.flush(30)
    time.sleep(5)  # the broker's own after-work (log flushes, GC) stays out of the first case


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_pool_table(results: dict[str, dict[str, float]], splits: dict[str, list[float]], processes: int) -> None:
    """R1p: the pool vs the one process, and each vs Orthanc; the instances each pool process stored."""
    print(f"\n| case | one process inst/s | pool({processes}) inst/s | pool / one | Orthanc | one / Orthanc "
          "| pool / Orthanc | instances per pool process |")
    print("|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for case, r in results.items():
        one, pool, oc = r.get("radstream", nan), r.get("radstream-pool", nan), r.get("orthanc", nan)
        split = "/".join(f"{n:.0f}" for n in splits.get(case, []))
        print(f"| {case} | {one:.1f} | {pool:.1f} | {pool / one:.2f} | {oc:.1f} | {one / oc:.2f} | {pool / oc:.2f} "
              f"| {split} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mr", type=int, default=200, help="MR slices (0.5 MB each)")
    ap.add_argument("--ct", type=int, default=1000, help="CT slices (33 kB each)")
    ap.add_argument("--rss-gb", type=float, default=1.0, help="GB of MR slices for the peak-RSS run (0 = skip)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--only", default="", help="comma-separated servers to run (default: all)")
    ap.add_argument("--associations", default="1,4", help="comma-separated association counts (default 1,4)")
    ap.add_argument("--processes", type=int, default=0,
                    help="also run the ingest pool with this many processes (radstream-pool; 0 = no pool)")
    ap.add_argument("--floor", action="store_true",
                    help="also run bare pynetdicom SCPs that discard each data set (stock and event-driven loops)")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}", flush=True)
    data = {
        "MR 0.5MB": write_series(work / "mr", args.mr, modality="MR", rows=512, columns=512, seed=1),
        "CT 33kB": write_series(work / "ct", args.ct, modality="CT", rows=128, columns=128, seed=2),
    }
    kafka = KafkaServer(work / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    try:
        settings = Settings(home=work / "rs-topics",
                            kafka={"bootstrap_servers": kafka.bootstrap, "topic_prefix": "bench"})
        create_topics(settings)
        warm_up_kafka(settings)
        servers = {
            "radstream": radstream_server(work, kafka.bootstrap, publish=True),
            "radstream-nopublish": radstream_server(work, kafka.bootstrap, publish=False),
            "dcmtk-storescp": dcmtk_server(work),
            "orthanc": orthanc_server(work),
        }
        pool_metrics = 0
        if args.processes > 1:
            pool_metrics = consecutive_free_ports(args.processes)
            servers["radstream-pool"] = radstream_server(work, kafka.bootstrap, publish=True,
                                                         processes=args.processes, metrics_port=pool_metrics)
        if args.floor:
            servers["pynetdicom-discard"] = bare_pynetdicom_server(work, event_driven=False)
            servers["pynetdicom-discard-event-driven"] = bare_pynetdicom_server(work, event_driven=True)
        if args.only:
            servers = {k: v for k, v in servers.items() if k in args.only.split(",")}
        results: dict[str, dict[str, float]] = {}
        splits: dict[str, list[float]] = {}
        for label, files in data.items():
            for assocs in (int(a) for a in args.associations.split(",")):
                case = f"{label}, {assocs} assoc"
                results[case] = {}
                for name, (start, port, aec) in servers.items():
                    with start():
                        storescu(files[:4], port, aec, 1)  # warm-up
                        before = pool_split(pool_metrics, args.processes) if name == "radstream-pool" else []
                        elapsed = storescu(files, port, aec, assocs)
                        if name == "radstream-pool":
                            after = pool_split(pool_metrics, args.processes)
                            splits[case] = [a - b for a, b in zip(after, before, strict=False)]
                    results[case][name] = len(files) / elapsed
                    print(f"{case:22s} {name:20s} {results[case][name]:8.1f} inst/s", flush=True)
        print("\n| case | radstream inst/s | no-publish | dcmtk storescp | Orthanc | R1 vs dcmtk | R1 vs Orthanc "
              "| R2 publish/no-publish |")
        print("|---|---|---|---|---|---|---|---|")
        for case, r in results.items():
            nan = float("nan")
            rs, nop = r.get("radstream", nan), r.get("radstream-nopublish", nan)
            dc, oc = r.get("dcmtk-storescp", nan), r.get("orthanc", nan)
            print(f"| {case} | {rs:.1f} | {nop:.1f} | {dc:.1f} | {oc:.1f} | {rs / dc:.2f} | {rs / oc:.2f} "
                  f"| {rs / nop:.2f} |")
        if args.processes > 1:
            print_pool_table(results, splits, args.processes)
        if args.floor:
            print("\n| case | pynetdicom discard (stock loops) | same, event-driven loops | dcmtk storescp "
                  "| floor / dcmtk | floor / Orthanc |")
            print("|---|---|---|---|---|---|")
            for case, r in results.items():
                nan = float("nan")
                st, ev = r.get("pynetdicom-discard", nan), r.get("pynetdicom-discard-event-driven", nan)
                dc, oc = r.get("dcmtk-storescp", nan), r.get("orthanc", nan)
                print(f"| {case} | {st:.1f} | {ev:.1f} | {dc:.1f} | {ev / dc:.2f} | {ev / oc:.2f} |")
        if args.rss_gb > 0:
            n = int(args.rss_gb * 1e9 / 524_288)
            extra = max(0, n - len(data["MR 0.5MB"]))
            more = write_series(work / "mr-rss", extra, modality="MR", rows=512, columns=512, seed=3) if extra else []
            files = (data["MR 0.5MB"] + more)[:n]
            start, port, aec = servers["radstream"]
            with start() as pid:
                elapsed = storescu(files, port, aec, 4)
                rss = peak_rss_mb(pid)
            size_gb = sum(f.stat().st_size for f in files) / 1e9
            print(f"\npeak RSS of radstream ingest receiving {size_gb:.2f} GB ({len(files)} MR slices, "
                  f"4 associations, publishing on): {rss:.0f} MB ({len(files) / elapsed:.1f} inst/s)")
    finally:
        kafka.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    exit_on_sigterm()
    main()
