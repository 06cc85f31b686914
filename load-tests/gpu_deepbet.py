"""GPU check for the real network: deepbet's 256³ brain segmentation net on the GPU vs the CPU, one run.

The same input (Colin27 cropped and normalised as the ``brain_extraction`` operator does, or a
reproducible random volume where mricron-data is absent) through:

- ``cpu-onnx``: the ONNX graph radstream rebuilt from deepbet's wheel, in onnxruntime on the CPU (what
  radstream's Triton runs here), float32 and the float16-on-the-wire variant;
- ``cuda-torch``: deepbet's own TorchScript file from the same wheel on the GPU (PyTorch), with and
  without copying the input to and the output from the GPU (the share of transport in a request);
- ``cpu-torch``: the same TorchScript on the CPU (the reference deepbet itself uses without a GPU).

Each R timed runs after one warm-up; outputs compared with the float32 ONNX (max |difference|, voxels
whose 0.5 threshold differs). PyTorch is not a radstream dependency: rows that need it are skipped
with the reason where it is missing. Prints and writes JSON.

    python load-tests/gpu_deepbet.py [--runs 5] [--wheel .gpu/deepbet-1.0.2-py3-none-any.whl] [--out var/gpu_deepbet]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from radstream.models import deepbet

T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def model_input() -> tuple[np.ndarray, str]:
    """deepbet's 256³ segmentation-net input for Colin27 (bounding box from the ONNX bbox net)."""
    if not T1.exists():
        rng = np.random.default_rng(0)
        return rng.standard_normal((1, 1, 256, 256, 256)).astype(np.float32) * 0.2 + 0.45, "random"
    import SimpleITK as sitk

    img = sitk.DICOMOrient(sitk.ReadImage(str(T1), sitk.sitkFloat32), "RAS")
    x = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    small = deepbet.resize_nearest_exact(x, deepbet.INPUT_SHAPES[deepbet.BBOX_MODEL])
    low, high = (float(v) for v in np.quantile(small, [0.005, 0.995]))
    with tempfile.TemporaryDirectory() as tmp:
        deepbet.build_repository(Path(tmp), transport="float32")
        sb = deepbet.onnx_session(Path(tmp) / deepbet.BBOX_MODEL / "1" / "model.onnx")
        p_small = deepbet.run_onnx(sb, deepbet.deepbet_normalise(small, low, high)[None, None])[0, 0]
    box = deepbet.bbox_with_margin(deepbet.largest_component(p_small > 0.5).astype(np.float32), x.shape)
    crop = deepbet.resize_nearest_exact(x[box], deepbet.INPUT_SHAPES[deepbet.BRAIN_MODEL])
    return deepbet.deepbet_normalise(crop, low, high)[None, None], "colin27"


def timed(fn: Any, runs: int) -> tuple[list[float], np.ndarray]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, np.asarray(out, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wheel", type=Path, default=None, help="deepbet's wheel (default: the cache, else PyPI)")
    ap.add_argument("--out", type=Path, default=Path("var/gpu_deepbet"))
    a = ap.parse_args()
    cache = a.wheel.parent if a.wheel is not None else deepbet.DEFAULT_CACHE
    wheel = deepbet.fetch_wheel(cache)
    x, source = model_input()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        deepbet.build_repository(repo, cache, transport="float32")
        deepbet.build_repository(repo, cache, transport="float16", suffix="_fp16")
        ref = None
        for name, folder in (("cpu-onnx", deepbet.BRAIN_MODEL), ("cpu-onnx-fp16", f"{deepbet.BRAIN_MODEL}_fp16")):
            session = deepbet.onnx_session(repo / folder / "1" / "model.onnx")
            times, out = timed(lambda s=session: deepbet.run_onnx(s, x), a.runs)
            ref = out if ref is None else ref
            rows[name] = {"seconds": times, "median_s": statistics.median(times)}
            rows[name]["max_abs_diff"] = float(np.abs(out - ref).max())
            rows[name]["threshold_differs"] = int(((out > 0.5) != (ref > 0.5)).sum())
    assert ref is not None
    try:
        import torch
    except ImportError as exc:
        rows["torch"] = {"skipped": f"PyTorch is not installed here ({exc})"}
    else:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(deepbet.NETWORKS[deepbet.BRAIN_MODEL])
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        rows["torch"] = {"version": torch.__version__, "cuda": torch.cuda.is_available(),
                         "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        for dev in devices:
            net = torch.jit.load(io.BytesIO(blob), map_location=dev).eval()

            def with_copies(net: Any = net, dev: str = dev) -> np.ndarray:
                with torch.inference_mode():
                    y = net(torch.from_numpy(x).to(dev))[:, 1:2]
                    return y.float().cpu().numpy()

            times, out = timed(with_copies, a.runs)
            row: dict[str, Any] = {"seconds": times, "median_s": statistics.median(times),
                                   "max_abs_diff": float(np.abs(out - ref).max()),
                                   "threshold_differs": int(((out > 0.5) != (ref > 0.5)).sum())}
            if dev == "cuda":
                xd = torch.from_numpy(x).to(dev)

                def resident(net: Any = net, xd: Any = xd) -> Any:
                    with torch.inference_mode():
                        y = net(xd)[:, 1:2]
                        torch.cuda.synchronize()
                        return y.float().cpu().numpy()[:0]  # nothing copied back but an empty slice

                t_res, _ = timed(resident, a.runs)
                row["resident_median_s"] = statistics.median(t_res)
            rows[f"{dev}-torch"] = row
    result = {"input": source, "shape": list(x.shape), "runs": a.runs, "rows": rows}
    if "cuda-torch" in rows:
        result["gpu_over_cpu_onnx"] = rows["cuda-torch"]["median_s"] / rows["cpu-onnx"]["median_s"]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_deepbet.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
