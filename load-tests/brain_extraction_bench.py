"""Brain extraction on Colin27: radstream's port of deepbet vs deepbet's own ``run_bet``, same machine, same run.

Three ways to the same mask, each R times (the first run of each is a warm-up and not counted):

- ``run_bet``: deepbet 1.0.2 itself (PyTorch, TorchScript weights) in the Python given by
  ``--deepbet-python`` (a venv with ``deepbet`` and ``torch``: PyTorch is not a radstream dependency;
  without it this row is skipped), timed inside that process around ``BrainExtraction.run`` only;
- ``onnx``: :mod:`radstream.models.deepbet`'s pre/post-processing with the ONNX networks in onnxruntime
  in this process (no Triton);
- ``triton``: the ``brain_extraction`` operator against a real Triton server (pytriton, CPU) serving the
  same networks, per stage (bounding-box net call, segmentation net call, the rest), for each transport
  variant alternated per round: float32 or float16 tensors on the wire, over gRPC or through Triton's
  system shared memory (``transport`` in the JSON: bytes on the socket, medians, ratios to float32).

Prints per-run seconds, Dice of each mask against ``run_bet``'s and ch2bet, and the ratios; writes JSON.

    python load-tests/brain_extraction_bench.py [--runs 3] [--deepbet-python /path/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from radstream.models import deepbet

T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
CH2BET = Path("/usr/share/mricron/templates/ch2bet.nii.gz")

RUN_BET = r"""
import json, sys, time, numpy as np, nibabel as nib, torch
from deepbet.bet import BrainExtraction
torch.set_num_threads(int(sys.argv[3]))
bet = BrainExtraction(no_gpu=True)
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); _, mask, _ = bet.run(sys.argv[1]); times.append(time.perf_counter() - t)
np.save(sys.argv[4], np.asarray(nib.as_closest_canonical(mask).dataobj) > 0)
print(json.dumps({"seconds": times, "torch": torch.__version__}))
"""


def ras_array(path: Path) -> np.ndarray:
    img = sitk.DICOMOrient(sitk.ReadImage(str(path), sitk.sitkFloat32), "RAS")
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def bench_onnx(repo: Path, x: np.ndarray, runs: int) -> tuple[list[float], np.ndarray]:
    sb = deepbet.onnx_session(repo / deepbet.BBOX_MODEL / "1" / "model.onnx")
    sm = deepbet.onnx_session(repo / deepbet.BRAIN_MODEL / "1" / "model.onnx")
    times, mask = [], np.zeros(1)
    for _ in range(runs + 1):
        t = time.perf_counter()
        prob, box = deepbet.brain_probability(x, lambda a: deepbet.run_onnx(sb, a), lambda a: deepbet.run_onnx(sm, a))
        mask = deepbet.brain_mask(prob, box)
        times.append(time.perf_counter() - t)
    return times[1:], mask


VARIANTS = {  # name -> (tensor type on the wire, Triton shared memory)
    "float32": ("float32", "off"), "float16": ("float16", "off"),
    "float32+shm": ("float32", "system"), "float16+shm": ("float16", "system"),
}


def wire_bytes(transport: str, shm: str) -> int:
    """Tensor bytes one brain extraction puts on the socket: both nets' input and output."""
    if shm == "system":
        return 0
    item = 2 if transport == "float16" else 4
    return sum(2 * int(np.prod(shape)) * item for shape in deepbet.INPUT_SHAPES.values())


def bench_triton(repo: Path, home: Path, runs: int, variants: list[str]) -> tuple[dict[str, list[dict[str, float]]],
                                                                                  np.ndarray]:
    """The brain_extraction operator against one real Triton server, each transport variant in turn per
    round (alternated, so load drifts hit all alike); the first round warms up and is not counted."""
    import pydicom
    from radstream.consumers.operators.base import Context
    from radstream.consumers.operators.brain_extraction import BrainExtraction
    from radstream.consumers.operators.series_loader import build_volume

    from radstream.devenv.process import free_port
    from radstream.devenv.triton import TritonServer
    from radstream.events.models import InferenceRequested, Trigger, utcnow
    from radstream.pipelines.operators_spec import load_inference_pipeline
    from radstream.settings import Settings
    from radstream.store import ContentStore
    from radstream.synth.nifti import nifti_to_dicom

    series = nifti_to_dicom(T1, home / "dcm")
    volume = build_volume([pydicom.dcmread(f) for f in series.files])
    token = "brain-extraction-bench"
    server = TritonServer(home / "triton", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          repository=repo, wait_instances=1, access_token=token)
    server.start()
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    labels = np.zeros(1)
    try:
        base = Settings(home=home)
        spec0 = load_inference_pipeline("brain-extraction")
        ops = {}
        for v in variants:
            transport, shm = VARIANTS[v]
            suffix = "_fp32" if transport == "float32" else ""
            settings = base.model_copy(update={"triton": base.triton.model_copy(update={
                "host": server.host, "grpc_port": server.grpc_port, "http_port": server.http_port,
                "request_timeout_s": 600.0, "shared_memory": shm, "access_token": token})})
            spec = spec0.model_copy(update={"model": spec0.model.model_copy(
                update={"name": f"{deepbet.BRAIN_MODEL}{suffix}"})})
            params = {**next(o.params for o in spec.operators if o.op == "brain_extraction"),
                      "bbox_model": f"{deepbet.BBOX_MODEL}{suffix}"}
            ops[v] = (settings, spec, BrainExtraction(settings, spec, params))
        req = InferenceRequested(producer="bench", patient_key="k", request_id="r", study_instance_uid="1",
                                 pipeline=spec0.name, pipeline_version="1", model_name=spec0.model.name,
                                 model_version="1", trigger=Trigger.MANUAL, source_event_id="s",
                                 last_received_at=utcnow(), series=[])
        for round_ in range(runs + 1):
            for v, (settings, spec, op) in ops.items():
                ctx = Context(settings, req, spec, ContentStore(home / "store"))
                ctx.volume = volume
                t = time.perf_counter()
                op.run(ctx)
                total = (time.perf_counter() - t) * 1000.0
                bbox, brain = ctx.timings_ms["triton_bbox_ms"], ctx.timings_ms["triton_brain_ms"]
                if round_ > 0:
                    rows[v].append({"total_ms": total, "bbox_net_ms": bbox, "brain_net_ms": brain,
                                    "rest_ms": total - bbox - brain})
                assert ctx.labels is not None
                labels = ctx.labels
        for _, _, op in ops.values():
            op.close()
    finally:
        server.stop()
    # labels are on the series grid (z, y, x in LPS: identity direction); to deepbet's RAS (x, y, z)
    lps = sitk.GetImageFromArray(labels)
    lps.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return rows, np.transpose(sitk.GetArrayFromImage(sitk.DICOMOrient(lps, "RAS")), (2, 1, 0)) > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--deepbet-python", type=Path, default=None)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("var/brain_extraction_bench.json"))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"transport variants through Triton, alternated per round ({', '.join(VARIANTS)})")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bet-bench-") as tmp:
        home = Path(tmp)
        repo = home / "repository"
        deepbet.build_repository(repo)
        x = ras_array(T1)
        ref = ras_array(CH2BET) > 0
        out: dict[str, Any] = {"runs": a.runs, "volume": list(x.shape)}
        ours = None
        if a.deepbet_python is not None:
            mask_file = home / "run_bet.npy"
            proc = subprocess.run([str(a.deepbet_python), "-c", RUN_BET, str(T1), str(a.runs + 1),
                                   str(a.torch_threads), str(mask_file)], capture_output=True, text=True, check=True)
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            ours = np.load(mask_file)
            out["run_bet"] = {"seconds": info["seconds"][1:], "torch": info["torch"],
                              "dice_ch2bet": dice(ours, ref), "ml": float(ours.sum()) / 1000.0}
        times, mask = bench_onnx(repo, x, a.runs)
        out["onnx"] = {"seconds": times, "dice_ch2bet": dice(mask, ref), "ml": float(mask.sum()) / 1000.0,
                       **({"dice_run_bet": dice(mask, ours)} if ours is not None else {})}
        variants = a.variants.split(",")
        if any(VARIANTS[v][0] == "float32" for v in variants):
            deepbet.build_repository(repo, transport="float32", suffix="_fp32")
        rows, tmask = bench_triton(repo, home, a.runs, variants)
        out["triton"] = {"stages": rows["float16+shm"] if "float16+shm" in rows else rows[variants[-1]],
                         "dice_ch2bet": dice(tmask, ref), "ml": float(tmask.sum()) / 1000.0,
                         **({"dice_run_bet": dice(tmask, ours)} if ours is not None else {})}
        out["transport"] = {v: {"wire_mb": wire_bytes(*VARIANTS[v]) / 1e6,
                                "total_s": statistics.median(r["total_ms"] for r in rows[v]) / 1000.0,
                                "brain_net_s": statistics.median(r["brain_net_ms"] for r in rows[v]) / 1000.0,
                                "bbox_net_s": statistics.median(r["bbox_net_ms"] for r in rows[v]) / 1000.0}
                            for v in variants}
        if "float32" in out["transport"]:
            ref_s = out["transport"]["float32"]["total_s"]
            for t in out["transport"].values():
                t["total_ratio_to_float32"] = t["total_s"] / ref_s
    triton_s = [r["total_ms"] / 1000.0 for r in out["triton"]["stages"]]
    med = {"onnx": statistics.median(out["onnx"]["seconds"]), "triton": statistics.median(triton_s)}
    if "run_bet" in out:
        med["run_bet"] = statistics.median(out["run_bet"]["seconds"])
        out["ratio_triton_to_run_bet"] = med["triton"] / med["run_bet"]
        out["ratio_onnx_to_run_bet"] = med["onnx"] / med["run_bet"]
    out["median_s"] = med
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
