"""Brain extraction on Colin27: radstream's port of deepbet vs deepbet's own ``run_bet``, same machine, same run.

Three ways to the same mask, each R times (the first run of each is a warm-up and not counted):

- ``run_bet``: deepbet 1.0.2 itself (PyTorch, TorchScript weights) in the Python given by
  ``--deepbet-python`` (a venv with ``deepbet`` and ``torch``: PyTorch is not a radstream dependency;
  without it this row is skipped), timed inside that process around ``BrainExtraction.run`` only;
- ``onnx``: :mod:`radstream.models.deepbet`'s pre/post-processing with the ONNX networks in onnxruntime
  in this process (no Triton);
- ``triton``: the ``brain_extraction`` operator against a real Triton server (pytriton, CPU) serving the
  same ONNX files, per stage (bounding-box net call, segmentation net call, the rest).

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


def bench_triton(repo: Path, home: Path, runs: int) -> tuple[list[dict[str, float]], np.ndarray]:
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
    server = TritonServer(home / "triton", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          repository=repo, wait_instances=1)
    server.start()
    try:
        base = Settings(home=home)
        settings = base.model_copy(update={"triton": base.triton.model_copy(update={
            "host": server.host, "grpc_port": server.grpc_port, "http_port": server.http_port,
            "request_timeout_s": 600.0})})
        spec = load_inference_pipeline("brain-extraction")
        params = next(o.params for o in spec.operators if o.op == "brain_extraction")
        op = BrainExtraction(settings, spec, params)
        req = InferenceRequested(producer="bench", patient_key="k", request_id="r", study_instance_uid="1",
                                 pipeline=spec.name, pipeline_version="1", model_name=spec.model.name,
                                 model_version="1", trigger=Trigger.MANUAL, source_event_id="s",
                                 last_received_at=utcnow(), series=[])
        rows, labels = [], np.zeros(1)
        for _ in range(runs + 1):
            ctx = Context(settings, req, spec, ContentStore(home / "store"))
            ctx.volume = volume
            t = time.perf_counter()
            op.run(ctx)
            total = (time.perf_counter() - t) * 1000.0
            rows.append({"total_ms": total, "bbox_net_ms": ctx.timings_ms["triton_bbox_ms"],
                         "brain_net_ms": ctx.timings_ms["triton_brain_ms"],
                         "rest_ms": total - ctx.timings_ms["triton_bbox_ms"] - ctx.timings_ms["triton_brain_ms"]})
            assert ctx.labels is not None
            labels = ctx.labels
        op.close()
    finally:
        server.stop()
    # labels are on the series grid (z, y, x in LPS: identity direction); to deepbet's RAS (x, y, z)
    lps = sitk.GetImageFromArray(labels)
    lps.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return rows[1:], np.transpose(sitk.GetArrayFromImage(sitk.DICOMOrient(lps, "RAS")), (2, 1, 0)) > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--deepbet-python", type=Path, default=None)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("var/brain_extraction_bench.json"))
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
        rows, tmask = bench_triton(repo, home, a.runs)
        out["triton"] = {"stages": rows, "dice_ch2bet": dice(tmask, ref), "ml": float(tmask.sum()) / 1000.0,
                         **({"dice_run_bet": dice(tmask, ours)} if ours is not None else {})}
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
