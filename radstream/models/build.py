"""Build the reference ONNX graphs and the Triton model repository (``docker/triton``).

``python -m radstream.models.build [--out docker/triton]`` writes
``<out>/<model>/1/model.onnx`` and ``<out>/<model>/config.pbtxt`` (onnxruntime backend,
GPU instance group) for NVIDIA's Triton container; ``radstream triton serve`` loads the same
ONNX files into onnxruntime sessions behind the pytriton server on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from radstream.models.specs import REFERENCE_MODELS, REFERENCE_NOTE, ModelSpec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = PROJECT_ROOT / "docker" / "triton"
OPSET = 17

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8}
_TRITON_TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}


def build_graph(spec: ModelSpec) -> onnx.ModelProto:
    """label = number of thresholds exceeded (0 at or above ``upper_cut``), as uint8."""
    inp, out = spec.inputs[0], spec.outputs[0]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    terms: list[str] = []
    for i, t in enumerate(spec.thresholds):
        inits.append(helper.make_tensor(f"t{i}", TensorProto.FLOAT, [], [t]))
        nodes.append(helper.make_node("Greater", [inp.name, f"t{i}"], [f"gt{i}"]))
        nodes.append(helper.make_node("Cast", [f"gt{i}"], [f"c{i}"], to=TensorProto.FLOAT))
        terms.append(f"c{i}")
    nodes.append(helper.make_node("Sum", terms, ["count"]))
    last = "count"
    if spec.upper_cut is not None:
        inits.append(helper.make_tensor("cut", TensorProto.FLOAT, [], [spec.upper_cut]))
        nodes.append(helper.make_node("Less", [inp.name, "cut"], ["below"]))
        nodes.append(helper.make_node("Cast", ["below"], ["keep"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["count", "keep"], ["kept"]))
        last = "kept"
    nodes.append(helper.make_node("Cast", [last], [out.name], to=_ONNX_TYPES[out.dtype]))
    dims: list[str | int] = [f"d{i}" for i in range(len(inp.dims))]
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info(inp.name, _ONNX_TYPES[inp.dtype], dims)],
        [helper.make_tensor_value_info(out.name, _ONNX_TYPES[out.dtype], dims)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="radstream-reference-models")
    model.ir_version = 8
    model.doc_string = f"{REFERENCE_NOTE}. {spec.description}"
    helper.set_model_props(model, {"radstream.reference_model": "true", "labels": repr(spec.labels)})
    onnx.checker.check_model(model)
    return model


def config_pbtxt(spec: ModelSpec, kind: str = "KIND_GPU") -> str:
    def tensor(t: object, section: str) -> str:
        from radstream.models.specs import TensorSpec

        assert isinstance(t, TensorSpec)
        dims = ", ".join(str(d) for d in t.dims)
        return f'  {{\n    name: "{t.name}"\n    data_type: {_TRITON_TYPES[t.dtype]}\n    dims: [ {dims} ]\n  }}'

    inputs = ",\n".join(tensor(t, "input") for t in spec.inputs)
    outputs = ",\n".join(tensor(t, "output") for t in spec.outputs)
    return (
        f"# {REFERENCE_NOTE}\n# {spec.description}\n"
        f'name: "{spec.name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
        f'version_policy: {{ latest: {{ num_versions: 1 }} }}\n'
    )


def build_repository(out: Path = DEFAULT_REPOSITORY) -> list[Path]:
    """Write every reference model as ``<out>/<name>/1/model.onnx`` + ``config.pbtxt``."""
    written = []
    for spec in REFERENCE_MODELS:
        model_dir = out / spec.name
        (model_dir / spec.version).mkdir(parents=True, exist_ok=True)
        path = model_dir / spec.version / "model.onnx"
        onnx.save(build_graph(spec), str(path))
        (model_dir / "config.pbtxt").write_text(config_pbtxt(spec))
        written.append(path)
    return written


def model_bytes(spec: ModelSpec) -> bytes:
    return bytes(build_graph(spec).SerializeToString())


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY)
    args = ap.parse_args()
    for p in build_repository(args.out):
        print(p)


if __name__ == "__main__":
    main()
