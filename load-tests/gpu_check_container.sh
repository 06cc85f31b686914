#!/usr/bin/env bash
# PREPARED, NOT RUN (the lent GPU machines have no Docker: load-tests/gpu_device.sh + gpu_check.py ran there).
# For a site with Docker and the NVIDIA runtime: Triton on a GPU (NVIDIA's container, onnxruntime backend with CUDA) serving the brain reference
# model from docker/triton, fed through `radstream infer` with a 512x512x200 volume; compares
# latency and throughput with the CPU pytriton server. Needs: docker with the NVIDIA runtime,
# a running Kafka (radstream dev up or RADSTREAM_KAFKA__BOOTSTRAP_SERVERS), and .venv.
# The brain model is a REFERENCE MODEL (a threshold), so GPU-vs-CPU compute differences are small:
# the check proves the GPU path and measures transport, not clinical model speed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
N=${N:-20}
OUT=${OUT:-var/gpu_check}
mkdir -p "$OUT"
$PY -m radstream.models.build --out docker/triton
# GPU Triton on 8100/8101/8102 with the same model repository (config.pbtxt: KIND_GPU)
docker run -d --rm --gpus all --name radstream-triton-gpu -p 8100:8000 -p 8101:8001 -p 8102:8002 \
  -v "$PWD/docker/triton:/models:ro" "$IMAGE" tritonserver --model-repository=/models --strict-model-config=false
trap 'docker stop radstream-triton-gpu >/dev/null 2>&1 || true' EXIT
for _ in $(seq 120); do curl -sf localhost:8100/v2/models/brain_lesion_ref/ready && break; sleep 1; done
# one 512x512x200 synthetic MR exam per request (about 100 MB of DICOM each)
$PY -m radstream.cli.main synth "$OUT/synth" --brain 1 --liver 0 --hips 0 --timepoints 1 --mr-size 512x512x200 \
  2>/dev/null || .venv/bin/radstream synth "$OUT/synth" --brain 1 --liver 0 --hips 0 --timepoints 1 --mr-size 512x512x200
run_case() {  # $1 = label, $2 = grpc port
  local prefix="gpucheck$1$RANDOM"
  RADSTREAM_KAFKA__TOPIC_PREFIX=$prefix .venv/bin/radstream topics create >/dev/null
  RADSTREAM_KAFKA__TOPIC_PREFIX=$prefix RADSTREAM_TRITON__GRPC_PORT=$2 \
    .venv/bin/radstream infer --pipeline brain-tumour >"$OUT/worker-$1.log" 2>&1 &
  local wpid=$!
  RADSTREAM_KAFKA__TOPIC_PREFIX=$prefix $PY - "$OUT/synth" "$N" "$1" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys, time, statistics
from pathlib import Path
from radstream.cli.context import settings
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.producer import EventProducer
from radstream.store import ContentStore
from radstream.synth import load_truth
from radstream.synth.requests import request_for_study
root, n, label = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = settings(); study = load_truth(root)["studies"][0]
prod = EventProducer(s, "gpu-check"); cons = EventConsumer(s, f"gpu-check-{label}", [s.topic("results")])
store = ContentStore(s.store_root)
reqs = [request_for_study(study, root, store, b"gpu", pipeline="brain-tumour", model_name="brain_lesion_ref")
        for _ in range(n)]
lat, t0 = [], time.perf_counter()
for r in reqs:  # sequential: latency per request
    t = time.perf_counter(); prod.send_sync(s.topic("requests.brain-tumour"), r.patient_key, r)
    while True:
        got = [x.event for x in cons.poll_batch(10, 0.5) if x.event is not None]
        if got:
            lat.append(time.perf_counter() - t); ev = got[0]; break
print(json.dumps({"case": label, "requests": n, "latency_s_median": statistics.median(lat),
                  "throughput_per_s": n / (time.perf_counter() - t0),
                  "triton_infer_ms": ev.timings_ms.get("triton_infer"), "result": type(ev).__name__}))
PY
  kill "$wpid"; wait "$wpid" || true
}
run_case gpu 8101
# the CPU reference: pytriton on 8200/8201
RADSTREAM_TRITON__HTTP_PORT=8200 RADSTREAM_TRITON__GRPC_PORT=8201 RADSTREAM_TRITON__METRICS_PORT=8202 \
  .venv/bin/radstream triton serve >"$OUT/triton-cpu.log" 2>&1 &
TPID=$!
for _ in $(seq 120); do curl -sf localhost:8200/v2/models/brain_lesion_ref/ready && break; sleep 1; done
run_case cpu 8201
kill "$TPID"; wait "$TPID" || true
echo "results in $OUT/results.jsonl"
