"""The ONNX graph walker that runs the reference models on a GPU (radstream triton serve --device cuda).

Its numpy backend is checked here against onnxruntime (the CPU server's runtime) on every reference
model; the torch backend walks the same nodes and is checked against onnxruntime on the GPU machine
by load-tests/gpu_check.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from radstream.devenv.stack import LocalStack
from radstream.devenv.triton import TritonServer
from radstream.models.build import build_graph
from radstream.models.graph_exec import NUMPY, GraphRunner, UnsupportedGraph, torch_backend
from radstream.models.specs import REFERENCE_MODELS, ModelSpec
from radstream.settings import Settings

pytestmark = pytest.mark.unit


def _onnxruntime(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(build_graph(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([spec.outputs[0].name], {spec.inputs[0].name: x})[0])


@pytest.mark.parametrize("spec", REFERENCE_MODELS, ids=lambda s: s.name)
def test_numpy_walk_matches_onnxruntime_voxel_for_voxel(spec: ModelSpec) -> None:
    rng = np.random.default_rng(7)
    shape = (5, 33, 31) if len(spec.inputs[0].dims) == 3 else (47, 53)
    x = rng.uniform(-0.2, 1.2, size=shape).astype(np.float32)
    # values exactly on every threshold and cut: Greater/Less are strict, a walk that used >= would differ here
    edges = [*spec.thresholds, *([spec.upper_cut] if spec.upper_cut is not None else [])]
    x.flat[: len(edges)] = np.asarray(edges, dtype=np.float32)
    got = GraphRunner(build_graph(spec), NUMPY).run(x)
    want = _onnxruntime(spec, x)
    assert got.dtype == want.dtype == np.uint8
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) >= {0, 1}  # the test data reaches more than one label


def test_reads_the_model_file_from_the_repository(tmp_path: Path) -> None:
    spec = REFERENCE_MODELS[0]
    path = tmp_path / "model.onnx"
    onnx.save(build_graph(spec), str(path))
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 4, 4)
    np.testing.assert_array_equal(GraphRunner(path).run(x), _onnxruntime(spec, x))


def _graph(node: onnx.NodeProto, out_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", out_type, ["n"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_refuses_an_operator_it_does_not_implement_when_loading() -> None:
    with pytest.raises(UnsupportedGraph, match=r"operator Relu .*not one of Greater, Less, Cast, Sum, Mul"):
        GraphRunner(_graph(helper.make_node("Relu", ["x"], ["y"], name="r")))


def test_refuses_a_cast_to_a_type_it_does_not_implement() -> None:
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE, name="c")
    with pytest.raises(UnsupportedGraph, match="Cast to ONNX type 11"):
        GraphRunner(_graph(node, TensorProto.DOUBLE))


def test_cuda_without_torch_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as where torch is not installed (CI, CPU images)
    with pytest.raises(RuntimeError, match="--device cuda needs PyTorch"):
        torch_backend("cuda")


def test_managed_server_passes_the_device_to_the_server(tmp_path: Path) -> None:
    argv = TritonServer(tmp_path, device="cuda").argv()
    assert argv[argv.index("--device") + 1] == "cuda"
    assert TritonServer(tmp_path).argv()[-2:] == ["--device", "cpu"]


def test_dev_stack_serves_on_the_configured_device(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, triton={"device": "cuda:1"})
    assert LocalStack(s).triton.device == "cuda:1"
    assert LocalStack(Settings(home=tmp_path)).triton.device == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu; rm -rf /", ""])
def test_settings_refuse_an_unknown_device(tmp_path: Path, device: str) -> None:
    with pytest.raises(ValidationError, match="device"):
        Settings(home=tmp_path, triton={"device": device})
