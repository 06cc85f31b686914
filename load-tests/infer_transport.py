"""Inference transport overhead: (time in the Triton operator - compute time reported by Triton)
/ compute time, for a 256x256x160 float32 volume through the brain reference model; gRPC vs HTTP
(binary tensors both). Real Triton (pytriton, CPU) on free ports.

    .venv/bin/python load-tests/infer_transport.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from radstream.consumers.operators.base import Context
from radstream.consumers.operators.triton_infer import TritonInference

from radstream.devenv.process import free_port
from radstream.devenv.triton import TritonServer
from radstream.events.models import InferenceRequested, Trigger, utcnow
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shape", default="160x256x256", help="slices x rows x columns")
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split("x"))
    rng = np.random.default_rng(0)
    volume = rng.random(shape, dtype=np.float32)
    out: dict[str, object] = {"benchmark": "inference transport overhead", "shape": list(shape),
                              "bytes_in": volume.nbytes, "model": "brain_lesion_ref", "repeats": a.repeats}
    with tempfile.TemporaryDirectory(prefix="radstream-transport-") as tmp:
        home = Path(tmp)
        triton = TritonServer(home / "triton", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        triton.start()
        try:
            spec = load_inference_pipeline("brain-tumour")
            for protocol in ("grpc", "http"):
                settings = Settings(home=home / "home", triton={"host": "127.0.0.1", "grpc_port": triton.grpc_port,
                                                                "http_port": triton.http_port, "protocol": protocol})
                op = TritonInference(settings, spec, {"collect_statistics": False})
                req = InferenceRequested(producer="bench", patient_key="k", request_id="r", study_instance_uid="1.2",
                                         pipeline="brain-tumour", pipeline_version="1", model_name="x",
                                         model_version="1", trigger=Trigger.MANUAL, source_event_id="s",
                                         last_received_at=utcnow(), series=[])
                ctx = Context(settings, req, spec, ContentStore(home / "store"))
                ctx.model_inputs = [volume]
                op.run(ctx)  # warm-up (connection, metadata)
                meta = op.model_meta()
                op_ms, compute_ms = [], []
                for _ in range(a.repeats):
                    before = op.client.compute_ns(meta)
                    t0 = time.perf_counter()
                    op.run(ctx)
                    op_ms.append((time.perf_counter() - t0) * 1000.0)
                    after = op.client.compute_ns(meta)
                    compute_ms.append((after[0] - before[0]) / 1e6)
                op.close()
                o, c = statistics.median(op_ms), statistics.median(compute_ms)
                out[protocol] = {"operator_ms_median": round(o, 2), "triton_compute_ms_median": round(c, 2),
                                 "overhead_ratio": round((o - c) / c, 3)}
        finally:
            triton.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
