"""R6: inference results/s with 4 worker replicas / with 1, for a model whose time is mostly waiting.

Real Kafka (KRaft) and a real Triton (pytriton, CPU) on free ports; the model is ``wait_ref``,
which waits ``--wait-ms`` per batch (as a busy GPU would) and batches concurrent requests
(Triton dynamic batcher) in each of ``--wait-instances`` model instances, so batches of
replicas that drift out of phase wait side by side, as streams on a GPU do. Workers are
separate ``radstream infer --pipeline wait-bench`` processes; the pipeline is a file
(loader -> normalise -> Triton), no code.
For each replica count: warm up, publish N requests as a backlog, time until N results.

    .venv/bin/python load-tests/infer_scaling.py [--requests 80] [--wait-ms 200] [--wait-instances 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from radstream.consumers.inference.worker import group_id

from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import exit_on_sigterm, free_port
from radstream.devenv.triton import TritonServer
from radstream.events.models import Event
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.producer import EventProducer
from radstream.kafka.topics import create_topics
from radstream.settings import Settings
from radstream.store import ContentStore
from radstream.synth import SynthConfig, synthesize
from radstream.synth.requests import request_for_study

PIPELINE = """\
name: wait-bench
version: "1"
description: benchmark pipeline around the wait_ref model (reference, not clinical)
model: {name: wait_ref, version: "1", inputs: [x], outputs: [y], reference_model: true}
operators:
  - op: load_series
    params: {kind: images}
  - op: normalise
    params: {window: [0, 4095]}
  - op: triton_infer
    params: {batch_dim: true}
"""


def assignment(s: Settings, group: str) -> list[list[int]]:
    """Partitions of each member of a stable consumer group (empty while it rebalances)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap_servers})
    d = admin.describe_consumer_groups([group])[group].result()
    if d.state != ConsumerGroupState.STABLE:
        return []
    return sorted(sorted(tp.partition for tp in m.assignment.topic_partitions) for m in d.members)


def stop_workers(procs: list[subprocess.Popen[bytes]], logs: list[Any]) -> None:
    """SIGTERM every worker (each finishes its request and leaves the group), wait, close their logs."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)
    for f in logs:
        f.close()


def run(replicas: int, n: int, settings: Settings, env: dict[str, str], root: Path,
        truth: dict[str, object]) -> tuple[float, list[list[int]]]:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})})
    create_topics(s)
    env = {**env, "RADSTREAM_KAFKA__TOPIC_PREFIX": prefix}
    cli = str(Path(sys.executable).parent / "radstream")
    logs = [open(settings.home / f"{prefix}-worker{i}.log", "wb") for i in range(replicas)]  # noqa: SIM115
    procs = [subprocess.Popen([cli, "infer", "--pipeline", "wait-bench"], env=env, stdout=log,
                              stderr=subprocess.STDOUT) for log in logs]
    producer = EventProducer(s, "bench-dispatcher", **{"linger.ms": 5})
    results = EventConsumer(s, f"bench-{prefix}", [s.topic("results")])
    store = ContentStore(s.store_root)
    studies = truth["studies"]  # type: ignore[index]
    topic = s.topic("requests.wait-bench")
    secret = b"bench"

    def publish(count: int) -> None:
        for i in range(count):
            req = request_for_study(studies[i % len(studies)], root, store, secret, pipeline="wait-bench",
                                    model_name="wait_ref")
            producer.send(topic, f"p{i}", req)
        producer.flush()

    def drain(count: int, timeout: float) -> list[Event]:
        # one per request: a request redelivered after a rebalance may be answered twice (at least once)
        got: dict[str, Event] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got.update((getattr(r.event, "request_id", ""), r.event) for r in results.poll_batch(500, 0.2)
                       if r.event is not None)
        if len(got) < count:
            raise TimeoutError(f"{len(got)}/{count} results")
        return list(got.values())

    try:
        publish(replicas * 4)  # warm-up: every replica joined, connected and has its partitions
        drain(replicas * 4, 180)
        # the warm-up can finish before the last replica joins; measure once all share the partitions
        # (a rebalance during the run, or one replica left with none, is not what R6 measures)
        group, parts = group_id(s, "wait-bench"), s.kafka.default_partitions
        deadline = time.monotonic() + 120
        while not ((a := assignment(s, group)) and len(a) == replicas and all(a)
                   and sum(map(len, a)) == parts):
            if time.monotonic() > deadline:
                exited = {i: p.returncode for i, p in enumerate(procs) if p.poll() is not None}
                raise TimeoutError(f"consumer group {group} not balanced over {replicas} replicas: {a}; "
                                   f"exited workers {exited}; logs in {settings.home}")
            time.sleep(0.5)
        publish(n)
        t0 = time.perf_counter()
        got = drain(n, 600)
        elapsed = time.perf_counter() - t0
        bad = [e for e in got if type(e).__name__ != "InferenceCompleted"]
        if bad:
            raise RuntimeError(f"{len(bad)} requests failed: {bad[0]}")
        return n / elapsed, assignment(s, group)
    finally:
        stop_workers(procs, logs)
        results.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--wait-ms", type=float, default=200.0)
    ap.add_argument("--wait-instances", type=int, default=4, help="instances of the wait_ref model in Triton")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radstream-r6-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "wait-bench.yaml").write_text(PIPELINE)
        kafka = KafkaServer(home / "kafka", port=free_port(), controller_port=free_port())
        triton = TritonServer(home / "triton", http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port(), wait_ms=a.wait_ms, wait_instances=a.wait_instances)
        kafka.start()
        triton.start()
        try:
            settings = Settings(
                home=home / "home", pipelines=["wait-bench"],
                kafka={"bootstrap_servers": kafka.bootstrap, "default_partitions": 8},
                triton={"host": "127.0.0.1", "grpc_port": triton.grpc_port, "http_port": triton.http_port},
                pipelines_dir=home / "pipelines",
            )
            env = {**os.environ, "RADSTREAM_HOME": str(home / "home"),
                   "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RADSTREAM_PIPELINES": '["wait-bench"]',
                   "RADSTREAM_TRITON__HOST": "127.0.0.1", "RADSTREAM_TRITON__GRPC_PORT": str(triton.grpc_port),
                   "RADSTREAM_TRITON__HTTP_PORT": str(triton.http_port),
                   "RADSTREAM_INFERENCE__PIPELINES_DIR": str(home / "pipelines"),
                   # replicas on one host: no /metrics port each (they would all want the infer default)
                   "RADSTREAM_OBSERVABILITY__PORTS": '{"infer": 0}'}
            (home / "home").mkdir(parents=True, exist_ok=True)
            root = home / "synth"
            truth = synthesize(root, SynthConfig(seed=1, brain_patients=0, liver_patients=0, hip_patients=4,
                                                 timepoints=1, dx_size=(64, 64), dx_images=1))
            one, _ = run(1, a.requests, settings, env, root, truth)
            four, parts = run(4, a.requests, settings, env, root, truth)
        finally:
            triton.stop()
            kafka.stop()
    print(json.dumps({"benchmark": "R6 inference scaling", "model": "wait_ref", "wait_ms": a.wait_ms,
                      "wait_instances": a.wait_instances,
                      "requests": a.requests, "results_per_s_1_replica": round(one, 2),
                      "results_per_s_4_replicas": round(four, 2), "R6": round(four / one, 2), "goal": 3.5,
                      "partitions_per_replica": parts,
                      "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    exit_on_sigterm()
    main()
