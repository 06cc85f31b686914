"""Sliding-window inference equals whole-volume inference on a volume that fits both.

First in numpy (a pointwise two-class model, Gaussian and uniform blending, odd sizes and a volume
smaller than a patch), then through a real Triton server: the reference brain model served whole
(``triton_infer``, one request) and its batched twin (the same ONNX graph over ``[B, D, H, W]``) cut
into 32³ patches with half overlap, ``batch_size`` patches per request (``sliding_window_infer``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from pydantic import SecretStr
from radstream.consumers.operators.base import Context
from radstream.consumers.operators.sliding_window import (
    Argmax,
    SlidingWindowInference,
    patch_starts,
    sliding_window,
)
from radstream.consumers.operators.triton_infer import TritonClient, TritonInference
from scipy import ndimage

from radstream.events.models import InferenceRequested, Trigger, utcnow
from radstream.models.build import build_graph, build_repository
from radstream.models.specs import BRAIN, TensorSpec
from radstream.pipelines.operators_spec import InferencePipelineSpec, load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore

BATCHED = "brain_lesion_ref_batched"
FIXED = "brain_lesion_ref_fixed"  # fixed shapes: outputs through shared memory too
FIXED_SHAPE = (24, 32, 28)
TOKEN = "sliding-window-test-triton-token"  # of the server's restricted endpoints (shared memory)


def two_class(x: np.ndarray) -> np.ndarray:
    """A pointwise model: [B, 1, ...] -> [B, 2, ...] probabilities."""
    p = 1.0 / (1.0 + np.exp(-(x[:, 0] - 0.5) * 8.0))
    return np.stack([1.0 - p, p], axis=1).astype(np.float32)


def smooth_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 3.0)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


def n_patches(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> int:
    return math.prod(len(patch_starts(n, p, overlap)) for n, p in zip(shape, patch, strict=True))


@pytest.mark.unit
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(("shape", "patch", "overlap", "batch"), [
    ((40, 50, 45), (16, 24, 20), 0.5, 3),
    ((33, 17, 64), (16, 16, 16), 0.25, 1),
    ((10, 12, 9), (16, 16, 16), 0.5, 4),  # smaller than a patch: padded, then cropped
])
def test_blended_probabilities_equal_the_whole_volume(blend: str, shape: tuple[int, int, int],
                                                      patch: tuple[int, int, int], overlap: float,
                                                      batch: int) -> None:
    x = smooth_volume(shape)
    sizes: list[int] = []

    def infer(tiles: np.ndarray) -> np.ndarray:
        assert tiles.shape[1:] == (1, *patch)
        sizes.append(tiles.shape[0])
        return two_class(tiles)

    probs, calls = sliding_window(x, patch, infer, overlap=overlap, batch_size=batch, blend=blend)
    whole = two_class(x[None, None])[0]
    assert probs.shape == whole.shape
    assert float(np.abs(probs - whole).max()) < 1e-5
    padded = tuple(max(n, p) for n, p in zip(shape, patch, strict=True))
    total = n_patches(padded, patch, overlap)
    assert calls == math.ceil(total / batch) == len(sizes) and sum(sizes) == total
    assert max(sizes) <= batch


@pytest.fixture(scope="module")
def batched_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from radstream.devenv.process import free_port
    from radstream.devenv.triton import TritonServer

    home = tmp_path_factory.mktemp("triton-sw")
    repo = home / "repository"
    build_repository(repo)
    spec = dataclasses.replace(BRAIN, name=BATCHED, inputs=(TensorSpec("image", "float32", (-1, -1, -1, -1)),),
                               outputs=(TensorSpec("labels", "uint8", (-1, -1, -1, -1)),))
    (repo / BATCHED / "1").mkdir(parents=True)
    onnx.save(build_graph(spec), str(repo / BATCHED / "1" / "model.onnx"))
    fixed = dataclasses.replace(BRAIN, name=FIXED, inputs=(TensorSpec("image", "float32", FIXED_SHAPE),),
                                outputs=(TensorSpec("labels", "uint8", FIXED_SHAPE),))
    graph = build_graph(fixed)
    for tensor in (*graph.graph.input, *graph.graph.output):  # build_graph names its dimensions: fix them
        for dim, n in zip(tensor.type.tensor_type.shape.dim, FIXED_SHAPE, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = n
    (repo / FIXED / "1").mkdir(parents=True)
    onnx.save(graph, str(repo / FIXED / "1" / "model.onnx"))
    server = TritonServer(home, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          repository=repo, wait_instances=1, access_token=TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def context(tmp_path: Path, settings: Settings, spec: InferencePipelineSpec, x: np.ndarray) -> Context:
    req = InferenceRequested(producer="t", patient_key="k", request_id="r", study_instance_uid="1.2",
                             pipeline=spec.name, pipeline_version="1", model_name=spec.model.name,
                             model_version="1", trigger=Trigger.MANUAL, source_event_id="s",
                             last_received_at=utcnow(), series=[])
    ctx = Context(settings, req, spec, ContentStore(tmp_path / "store"))
    ctx.model_inputs = [x]
    return ctx


def with_model(spec: InferencePipelineSpec, name: str) -> InferencePipelineSpec:
    return spec.model_copy(update={"model": spec.model.model_copy(update={"name": name})})


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sliding_window_through_triton_equals_whole_volume(tmp_path: Path, batched_triton: Any,
                                                           protocol: str) -> None:
    base = Settings(home=tmp_path)
    settings = base.model_copy(update={"triton": base.triton.model_copy(update={
        "host": batched_triton.host, "http_port": batched_triton.http_port,
        "grpc_port": batched_triton.grpc_port})})
    spec = load_inference_pipeline("brain-tumour")
    x = smooth_volume((48, 64, 56), seed=3)
    assert 0.05 < float((x > BRAIN.thresholds[0]).mean()) < 0.95  # both classes present

    whole_ctx = context(tmp_path, settings, spec, x)
    whole = TritonInference(settings, spec, {"protocol": protocol})
    whole.run(whole_ctx)
    whole.close()
    expected = np.asarray(whole_ctx.model_outputs[0])
    assert expected.shape == x.shape

    patch, batch = (32, 32, 32), 3
    sw_ctx = context(tmp_path, settings, with_model(spec, BATCHED), x)
    sw = SlidingWindowInference(settings, with_model(spec, BATCHED), {
        "protocol": protocol, "patch_size": list(patch), "overlap": 0.5, "batch_size": batch,
        "model_output": "labels", "num_classes": 2, "channel_axis": False, "keep_probabilities": True,
        "collect_statistics": False})
    sw.run(sw_ctx)
    sw.close()
    got = sw_ctx.model_outputs[0]
    assert got.dtype == np.uint8 and got.shape == x.shape
    agreement = float((got == expected).mean())
    assert agreement >= 0.9999, agreement  # a pointwise model: identical but for blending ties
    assert sw_ctx.notes["triton_requests"] == math.ceil(n_patches(x.shape, patch, 0.5) / batch)
    probs = sw_ctx.notes["probabilities"][0]
    assert probs.shape == (2, *x.shape) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def _headers(protocol: str, token: str = TOKEN) -> dict[str, str]:
    return {"triton-grpc-protocol-triton-access-token" if protocol == "grpc" else "triton-access-token": token}


def _ours(client: Any, protocol: str) -> set[str]:
    """Names of radstream's regions the server has registered."""
    status = client.get_system_shared_memory_status(as_json=True, headers=_headers(protocol)) \
        if protocol == "grpc" else client.get_system_shared_memory_status(headers=_headers(protocol))
    regions = status.get("regions", {}) if isinstance(status, dict) and protocol == "grpc" else status
    names = regions.keys() if isinstance(regions, dict) else [r["name"] for r in regions]
    return {n for n in names if n.startswith("rs")}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", [BRAIN.name, FIXED])
def test_shared_memory_transport_equals_the_socket(tmp_path: Path, batched_triton: Any, protocol: str,
                                                   model: str) -> None:
    """Tensors through Triton's system shared memory (inputs always; outputs where the model fixes their
    shape) give what the socket gives; the regions are the server's while in use, gone after close; a
    server that forgot them (as after a restart) gets them again on the retried call."""
    base = Settings(home=tmp_path)

    def settings(shm: str, token: str = TOKEN) -> Settings:
        return base.model_copy(update={"triton": base.triton.model_copy(update={
            "host": batched_triton.host, "http_port": batched_triton.http_port, "access_token": SecretStr(token),
            "grpc_port": batched_triton.grpc_port, "shared_memory": shm, "backoff_initial_s": 0.1})})

    spec = with_model(load_inference_pipeline("brain-tumour"), model)
    x = smooth_volume(FIXED_SHAPE, seed=5)
    outputs = {}
    for shm in ("off", "system"):
        op = TritonInference(settings(shm), spec, {"protocol": protocol})
        assert (op.client.shm is not None) == (shm == "system")
        for _ in range(2):  # the second call reuses the regions
            ctx = context(tmp_path, settings(shm), spec, x)
            op.run(ctx)
        outputs[shm] = np.asarray(ctx.model_outputs[0])
        if shm == "system":
            assert op.client.shm is not None
            regions = _ours(op.client.client(), protocol)
            assert len(regions) == len(op.client.shm) == (2 if model == FIXED else 1), regions
            # the server forgets them (a restart): the call fails once, is retried and registers them again
            op.client.client().unregister_system_shared_memory(headers=_headers(protocol))
            ctx = context(tmp_path, settings(shm), spec, x)
            op.run(ctx)
            assert np.array_equal(np.asarray(ctx.model_outputs[0]), outputs["off"])
            assert len(_ours(op.client.client(), protocol)) == len(op.client.shm)
        op.close()
    assert outputs["off"].shape == FIXED_SHAPE and outputs["off"].dtype == np.uint8
    assert np.array_equal(outputs["system"], outputs["off"])
    fresh = TritonClient(settings("off"), protocol, 10.0).client()
    assert _ours(fresh, protocol) == set()  # released at close
    # without the server's token shared memory is refused: the client says so once and uses the socket
    wrong = TritonInference(settings("system", token="not-the-token"), spec, {"protocol": protocol})
    ctx = context(tmp_path, settings("system", token="not-the-token"), spec, x)
    wrong.run(ctx)
    assert wrong.client.shm is None and np.array_equal(np.asarray(ctx.model_outputs[0]), outputs["off"])
    wrong.close()


@pytest.mark.unit
def test_argmax_drops_the_batch_axis_and_picks_the_class(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    spec = load_inference_pipeline("brain-tumour")
    x = smooth_volume((8, 9, 10))
    ctx = context(tmp_path, settings, spec, x)
    probs = two_class(x[None, None])
    ctx.model_outputs = [probs]
    Argmax(settings, spec, {}).run(ctx)
    assert ctx.model_outputs[0].dtype == np.uint8
    assert np.array_equal(ctx.model_outputs[0], (probs[0, 1] > probs[0, 0]).astype(np.uint8))
    with pytest.raises(Exception, match="extra"):
        Argmax(settings, spec, {"axis": 1})  # typed params, unknown keys refused


@pytest.mark.slow
def test_a_512x512x400_volume_stays_within_its_memory_budget() -> None:
    """The sliding window over 512x512x400 float32 (400 MB) in a fresh process: peak RSS within 2.5 GB
    (the input, two classes' accumulators, the weights and the label map; measured 2.0 GB), labels
    equal to the whole-volume answer of the pointwise model."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "load-tests" / "sliding_window_memory.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout)
    assert row["shape"] == [400, 512, 512] and row["input_mb"] == 400.0
    assert row["agreement_with_whole_volume"] == 1.0
    assert row["peak_rss_mb"] < 2560, row
