"""GPU check: the brain reference model served by Triton on a GPU vs on the CPU, fed through
``radstream infer`` with a 512x512x200 MR series (about 100 MB of DICOM, 200 MB as float32).

Real Kafka (KRaft) and two real Triton servers (pytriton) on free ports: ``--device cuda`` runs the
model's ONNX graph with PyTorch on the GPU (:mod:`radstream.models.graph_exec`), ``--device cpu``
with onnxruntime. For each device:

- direct: the same normalised volume sent to the model R times (tritonclient, gRPC): call latency
  and Triton's own compute time; the GPU output must equal the CPU output voxel for voxel;
- through ``radstream infer`` (W worker processes, one pipeline, the whole operator chain: load the
  series from the store, normalise, Triton, connected components, volumes, DICOM SEG and SR):
  latency = request published -> result read, one request at a time (L requests);
  throughput = B requests published at once, results per second;
- every result's lesion volume against the synthetic ground truth (within 3%).

    python load-tests/gpu_check.py [--devices cuda,cpu] [--size 512x512x200] [--out var/gpu_check]

The model is a REFERENCE MODEL (one threshold): its compute is tiny on either device, so the figures
measure the GPU serving path and the transport of a large volume, not a clinical model's speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import KafkaException
from radstream.consumers.inference.worker import group_id
from radstream.consumers.operators.base import Context
from radstream.consumers.operators.triton_infer import TritonInference

from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import exit_on_sigterm, free_port
from radstream.devenv.triton import TritonServer
from radstream.events.models import Event, InferenceCompleted, InferenceRequested
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.producer import EventProducer
from radstream.kafka.topics import create_topics
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore
from radstream.synth import SynthConfig, synthesize
from radstream.synth.requests import request_for_study

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_scaling import assignment, stop_workers  # a sibling load test's group and worker helpers

PIPELINE = "brain-tumour"
MODEL = "brain_lesion_ref"


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def settings_for(home: Path, kafka: KafkaServer, triton: TritonServer, prefix: str) -> Settings:
    return Settings(home=home, pipelines=[PIPELINE],
                    kafka={"bootstrap_servers": kafka.bootstrap, "default_partitions": 8, "topic_prefix": prefix},
                    triton={"host": "127.0.0.1", "grpc_port": triton.grpc_port, "http_port": triton.http_port})


def direct(s: Settings, volume: np.ndarray, repeats: int) -> tuple[dict[str, float], np.ndarray]:
    """The model alone: call latency and Triton's compute time per call (median of ``repeats``)."""
    spec = load_inference_pipeline(PIPELINE)
    op = TritonInference(s, spec, {"collect_statistics": False})
    meta = op.model_meta()
    name = meta.inputs[0].name
    out = op.client.infer(meta, {name: volume})[meta.outputs[0].name]  # warm-up (and the output compared)
    call_ms, compute_ms = [], []
    for _ in range(repeats):
        before = op.client.compute_ns(meta)
        t0 = time.perf_counter()
        op.client.infer(meta, {name: volume})
        call_ms.append((time.perf_counter() - t0) * 1000.0)
        compute_ms.append((op.client.compute_ns(meta)[0] - before[0]) / 1e6)
    op.close()
    return {"call_ms_median": round(statistics.median(call_ms), 2),
            "triton_compute_ms_median": round(statistics.median(compute_ms), 2)}, np.asarray(out)


def in_process(volume: np.ndarray, devices: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """The model's own compute, no server: onnxruntime on the CPU (1 thread, as served, and all cores) and
    the torch walk on each GPU device (with and without the host<->device copies)."""
    import onnxruntime as ort

    from radstream.models.build import build_graph
    from radstream.models.graph_exec import GraphRunner, torch_backend
    from radstream.models.specs import BRAIN

    def median_ms(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        return round(statistics.median(times), 2)

    graph = build_graph(BRAIN).SerializeToString()
    out: dict[str, dict[str, float]] = {}
    for threads in (1, os.cpu_count() or 1):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])
        out[f"onnxruntime_cpu_{threads}_threads"] = {
            "ms": median_ms(lambda sess=sess: sess.run(None, {"image": volume}))}
    for d in devices:
        if d == "cpu":
            continue
        import torch

        runner = GraphRunner(build_graph(BRAIN), torch_backend(d))
        resident = runner.backend.to_device(volume)

        def on_device(runner: GraphRunner = runner, resident: Any = resident) -> None:
            runner.run_on_device(resident)
            torch.cuda.synchronize()

        out[f"torch_{d}"] = {"ms_with_copies": median_ms(lambda runner=runner: runner.run(volume)),
                             "ms_on_device": median_ms(on_device)}
    return out


def through_workers(s: Settings, env: dict[str, str], requests: list[InferenceRequested], workers: int,
                    latency_n: int, burst_n: int, truth_ml: float) -> dict[str, Any]:
    """W ``radstream infer`` processes; sequential requests for latency, then a burst for throughput."""
    create_topics(s)
    env = {**env, "RADSTREAM_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
           "RADSTREAM_TRITON__GRPC_PORT": str(s.triton.grpc_port),
           "RADSTREAM_TRITON__HTTP_PORT": str(s.triton.http_port)}
    logs = [open(s.home / f"{s.kafka.topic_prefix}-worker{i}.log", "wb") for i in range(workers)]  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "-m", "radstream.cli", "infer", "--pipeline", PIPELINE], env=env,
                              stdout=f, stderr=subprocess.STDOUT) for f in logs]
    producer = EventProducer(s, "gpu-check", **{"linger.ms": 0})
    results = EventConsumer(s, f"gpu-check-{s.kafka.topic_prefix}", [s.topic("results")])
    topic = s.topic(f"requests.{PIPELINE}")
    queue = list(requests)

    def drain(count: int, timeout: float) -> dict[str, tuple[Event, float]]:
        got: dict[str, tuple[Event, float]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for r in results.poll_batch(100, 0.05):
                if r.event is not None:
                    got.setdefault(getattr(r.event, "request_id", ""), (r.event, time.perf_counter()))
        if len(got) < count:
            exited = {i: p.returncode for i, p in enumerate(procs) if p.poll() is not None}
            raise TimeoutError(f"{len(got)}/{count} results; exited workers {exited}; logs in {s.home}")
        return got

    def publish(n: int) -> list[tuple[str, float]]:
        sent = []
        for _ in range(n):
            req = queue.pop()
            producer.send(topic, req.request_id, req)
            sent.append((req.request_id, time.perf_counter()))
        producer.flush()
        return sent

    try:
        group = group_id(s, PIPELINE)
        deadline = time.monotonic() + 120
        members: list[list[int]] = []
        while not (len(members) == workers and all(members)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer group {group} not balanced over {workers} workers: {members}")
            time.sleep(0.3)
            try:
                members = assignment(s, group)
            except KafkaException:  # the group's coordinator is not there until the first worker joins
                members = []
        # warm-up: requests until every worker got one (connected to Triton, caches warm), then their results
        cold = [set(m) for m in members]
        hit: list[int] = []
        sent = 0
        while cold and sent < 12 * workers:
            req = queue.pop()
            producer.send(topic, req.request_id, req, on_delivery=lambda err, msg: hit.append(msg.partition()))
            producer.flush()
            sent += 1
            cold = [m for m in cold if not m & set(hit)]
        warm = drain(sent, 300)
        latencies, events = [], [e for e, _ in warm.values()]
        for _ in range(latency_n):
            [(rid, t_sent)] = publish(1)
            got = drain(1, 300)
            event, t_got = got[rid]
            latencies.append(t_got - t_sent)
            events.append(event)
        burst = min(len(queue), burst_n)
        t0 = time.perf_counter()
        publish(burst)
        got = drain(burst, 600)
        elapsed = max(t for _, t in got.values()) - t0
        events += [e for e, _ in got.values()]
    finally:
        stop_workers(procs, logs)
        results.close()
    failed = [e for e in events if not isinstance(e, InferenceCompleted)]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")
    done = [e for e in events if isinstance(e, InferenceCompleted)]
    volumes = [sum(m.value for m in e.measurements if m.name == "volume" and m.label == "lesion") for e in done]
    timings = {k: round(statistics.median(e.timings_ms[k] for e in done), 1)
               for k in ("load_series", "normalise", "triton_infer", "triton_compute_ms", "connected_components",
                         "seg_writer", "total") if all(k in e.timings_ms for e in done)}
    return {"workers": workers, "warm_up_requests": sent, "latency_s": [round(v, 3) for v in latencies],
            "latency_s_median": round(statistics.median(latencies), 3),
            "burst_requests": burst, "burst_s": round(elapsed, 2), "throughput_per_s": round(burst / elapsed, 3),
            "stage_ms_median": timings, "lesion_ml": sorted({round(v, 4) for v in volumes}),
            "truth_ml": round(truth_ml, 4),
            "volume_within_3pct": all(abs(v - truth_ml) <= 0.03 * truth_ml for v in volumes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cuda,cpu", help="Triton devices to compare, in order")
    ap.add_argument("--size", default="512x512x200", help="columns x rows x slices of the MR series")
    ap.add_argument("--direct", type=int, default=5, help="direct model calls per device")
    ap.add_argument("--latency", type=int, default=4, help="sequential requests through the workers")
    ap.add_argument("--burst", type=int, default=8, help="requests published at once (throughput)")
    ap.add_argument("--workers", type=int, default=4, help="radstream infer processes per device")
    ap.add_argument("--direct-only", action="store_true", help="only the direct calls (no Kafka, no workers)")
    ap.add_argument("--out", type=Path, default=Path("var/gpu_check"))
    a = ap.parse_args()
    devices = [d for d in a.devices.split(",") if d]
    a.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"check": "GPU vs CPU Triton through radstream infer", "model": MODEL,
                              "size": a.size, "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="radstream-gpu-check-") as tmp:
        home = Path(tmp)
        kafka = KafkaServer(home / "kafka", port=free_port(), controller_port=free_port())
        servers = {d: TritonServer(home / f"triton-{d}", http_port=free_port(), grpc_port=free_port(),
                                   metrics_port=free_port(), device=d, wait_instances=1) for d in devices}
        errors: list[BaseException] = []

        def start(t: TritonServer) -> None:
            try:
                t.start(timeout=300)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(t,), daemon=True) for t in servers.values()]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        try:
            if not a.direct_only:
                kafka.start()
                log(f"kafka up in {time.perf_counter() - t0:.1f}s")
            root = home / "synth"
            cols, rows, slices = (int(v) for v in a.size.split("x"))
            truth = synthesize(root, SynthConfig(seed=3, brain_patients=1, liver_patients=0, hip_patients=0,
                                                 timepoints=1, mr_shape=(slices, rows, cols)))
            study = truth["studies"][0]
            truth_ml = float(study["truth"]["volumes_ml"]["lesion"])
            log(f"synth {a.size} written ({sum(f.stat().st_size for f in root.rglob('*.dcm')) / 1e6:.0f} MB)")
            for t in threads:
                t.join(300)
            if errors:
                raise errors[0]
            log(f"triton servers up in {time.perf_counter() - t0:.1f}s: {', '.join(servers)}")
            (home / "home").mkdir()
            env = {**os.environ, "RADSTREAM_HOME": str(home / "home"), "RADSTREAM_PIPELINES": json.dumps([PIPELINE]),
                   "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RADSTREAM_TRITON__HOST": "127.0.0.1",
                   "RADSTREAM_OBSERVABILITY__PORTS": '{"infer": 0}'}
            # one normalised volume for the direct calls (the pipeline's window: [0, 1200] -> [0, 1])
            probe = settings_for(home / "home", kafka, next(iter(servers.values())), "probe")
            store = ContentStore(probe.store_root)
            # the series is stored once; every request names it under a request id of its own
            first = request_for_study(study, root, store, b"gpu-check", pipeline=PIPELINE, model_name=MODEL)
            n_req = 1 if a.direct_only else 12 * a.workers + a.latency + a.burst
            per_device = {d: [dataclasses.replace(first, request_id=str(uuid.uuid4())) for _ in range(n_req)]
                          for d in devices}
            from radstream.consumers.inference.chain import Chain

            chain = Chain(probe, load_inference_pipeline(PIPELINE), store)
            ctx = Context(probe, per_device[devices[0]][0], chain.spec, store)
            for _, op in chain.operators[:2]:  # load_series, normalise
                op.run(ctx)
            volume = np.ascontiguousarray(ctx.model_inputs[0], dtype=np.float32)
            report["volume_shape"] = list(volume.shape)
            report["model_compute_in_process"] = in_process(volume, devices, a.direct)
            log(f"in-process model compute: {report['model_compute_in_process']}")
            outputs = {}
            for d, server in servers.items():
                s = settings_for(home / "home", kafka, server, f"gpucheck{d.replace(':', '')}{uuid.uuid4().hex[:6]}")
                res, outputs[d] = direct(s, volume, a.direct)
                log(f"{d} direct: {res}")
                report[d] = {"direct": res}
                if not a.direct_only:
                    report[d]["radstream_infer"] = through_workers(s, env, per_device[d], a.workers, a.latency,
                                                                   a.burst, truth_ml)
                    log(f"{d} through radstream infer: {report[d]['radstream_infer']}")
            if len(outputs) > 1:
                first, *rest = outputs.values()
                report["outputs_equal"] = all(np.array_equal(first, o) for o in rest)
                report["lesion_voxels"] = int(np.count_nonzero(first))
        except BaseException:
            for f in sorted(f for f in home.rglob("*.log") if "data" not in f.parts):  # the home goes with the run
                lines = f.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {f.relative_to(home)} (last {len(lines)} lines)", *lines, sep="\n", file=sys.stderr)
            raise
        finally:
            for server in servers.values():
                server.stop(timeout=30)
            kafka.stop()
    text = json.dumps(report, indent=2)
    (a.out / ("gpu_check_direct.json" if a.direct_only else "gpu_check.json")).write_text(text + "\n")
    print(text)
    if report.get("outputs_equal") is False:
        raise SystemExit("GPU and CPU outputs differ")


if __name__ == "__main__":
    exit_on_sigterm()
    main()
