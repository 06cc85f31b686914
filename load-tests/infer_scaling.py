"""R6: inference results/s with 4 worker replicas / with 1, for a model whose time is mostly waiting.

Real Kafka (KRaft) and a real Triton (pytriton, CPU) on free ports; the model is ``wait_ref``,
which waits ``--wait-ms`` per batch (as a busy GPU would) and batches concurrent requests
(Triton dynamic batcher). Workers are separate ``radstream infer --pipeline wait-bench``
processes; the pipeline is a file (loader -> normalise -> Triton), no code.
For each replica count: warm up, publish N requests as a backlog, time until N results.

    .venv/bin/python load-tests/infer_scaling.py [--requests 80] [--wait-ms 200]
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

from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import free_port
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
outputs: [detections]
"""


def run(replicas: int, n: int, settings: Settings, env: dict[str, str], root: Path, truth: dict[str, object]) -> float:
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
        got: list[Event] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got.extend(r.event for r in results.poll_batch(500, 0.2) if r.event is not None)
        if len(got) < count:
            raise TimeoutError(f"{len(got)}/{count} results")
        return got

    try:
        publish(replicas * 4)  # warm-up: every replica joined, connected and has its partitions
        drain(replicas * 4, 180)
        publish(n)
        t0 = time.perf_counter()
        got = drain(n, 600)
        elapsed = time.perf_counter() - t0
        bad = [e for e in got if type(e).__name__ != "InferenceCompleted"]
        if bad:
            raise RuntimeError(f"{len(bad)} requests failed: {bad[0]}")
        return n / elapsed
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        for log in logs:
            log.close()
        results.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--wait-ms", type=float, default=200.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="radstream-r6-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "wait-bench.yaml").write_text(PIPELINE)
        kafka = KafkaServer(home / "kafka", port=free_port(), controller_port=free_port())
        triton = TritonServer(home / "triton", http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port(), wait_ms=a.wait_ms)
        kafka.start()
        triton.start()
        try:
            settings = Settings(
                home=home / "home", pipelines=["wait-bench"],
                kafka={"bootstrap_servers": kafka.bootstrap, "default_partitions": 8},
                triton={"host": "127.0.0.1", "grpc_port": triton.grpc_port, "http_port": triton.http_port},
                inference={"pipelines_dir": home / "pipelines"},
            )
            env = {**os.environ, "RADSTREAM_HOME": str(home / "home"),
                   "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RADSTREAM_PIPELINES": '["wait-bench"]',
                   "RADSTREAM_TRITON__HOST": "127.0.0.1", "RADSTREAM_TRITON__GRPC_PORT": str(triton.grpc_port),
                   "RADSTREAM_TRITON__HTTP_PORT": str(triton.http_port),
                   "RADSTREAM_INFERENCE__PIPELINES_DIR": str(home / "pipelines")}
            (home / "home").mkdir(parents=True, exist_ok=True)
            root = home / "synth"
            truth = synthesize(root, SynthConfig(seed=1, brain_patients=0, liver_patients=0, hip_patients=4,
                                                 timepoints=1, dx_size=(64, 64), dx_images=1))
            one = run(1, a.requests, settings, env, root, truth)
            four = run(4, a.requests, settings, env, root, truth)
        finally:
            triton.stop()
            kafka.stop()
    print(json.dumps({"benchmark": "R6 inference scaling", "model": "wait_ref", "wait_ms": a.wait_ms,
                      "requests": a.requests, "results_per_s_1_replica": round(one, 2),
                      "results_per_s_4_replicas": round(four, 2), "R6": round(four / one, 2), "goal": 3.5,
                      "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
