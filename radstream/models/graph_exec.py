"""Run a reference model's ONNX graph on an accelerator with PyTorch (``radstream triton serve --device cuda``).

The reference graphs use five elementwise ONNX operators (Greater, Less, Cast, Sum, Mul). On a
GPU machine that has PyTorch with CUDA but not onnxruntime-gpu (a 244 MiB wheel, built for one CUDA
major version), :class:`GraphRunner` walks the same ONNX file node by node with torch tensors on
the device, so pytriton serves the model from GPU memory.
NVIDIA's Triton container with ``docker/triton`` (the ONNX Runtime backend) stays the production
path; this one proves and measures the GPU path where that container cannot run.

A graph with any other operator is refused when it is loaded (:class:`UnsupportedGraph`), never
half-run. :data:`NUMPY` runs the same walk on the CPU with numpy; the tests check it against
onnxruntime, and the GPU check compares the torch result with onnxruntime voxel for voxel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

SUPPORTED_OPS = ("Greater", "Less", "Cast", "Sum", "Mul")
_NUMPY_TYPES: dict[int, Any] = {TensorProto.FLOAT: np.float32, TensorProto.UINT8: np.uint8,
                                TensorProto.BOOL: np.bool_}


class UnsupportedGraph(ValueError):
    """The graph uses an operator or a data type this runner does not implement."""


@dataclass(frozen=True)
class Backend:
    """How to run the five operators on one kind of array (numpy on the CPU, torch on a device)."""

    to_device: Callable[[np.ndarray[Any, Any]], Any]
    to_numpy: Callable[[Any], np.ndarray[Any, Any]]
    greater: Callable[[Any, Any], Any]
    less: Callable[[Any, Any], Any]
    cast: Callable[[Any, int], Any]
    add: Callable[[Any, Any], Any]
    mul: Callable[[Any, Any], Any]


NUMPY = Backend(
    to_device=np.asarray, to_numpy=np.asarray, greater=np.greater, less=np.less,
    cast=lambda x, to: np.asarray(x).astype(_NUMPY_TYPES[to], copy=False), add=np.add, mul=np.multiply,
)


def torch_backend(device: str = "cuda") -> Backend:
    """torch tensors on ``device``; raises RuntimeError when torch or the device is missing."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(f"--device {device} needs PyTorch (pip install torch): {exc}") from exc
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    types: dict[int, Any] = {TensorProto.FLOAT: torch.float32, TensorProto.UINT8: torch.uint8,
                             TensorProto.BOOL: torch.bool}

    def to_device(a: np.ndarray[Any, Any]) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev, non_blocking=False)

    def to_numpy(t: Any) -> np.ndarray[Any, Any]:
        return np.asarray(t.cpu().numpy())

    return Backend(to_device=to_device, to_numpy=to_numpy, greater=torch.gt, less=torch.lt,
                   cast=lambda x, to: x.to(types[to]), add=torch.add, mul=torch.mul)


@dataclass(frozen=True)
class _Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    to: int | None  # Cast's target type


class GraphRunner:
    """One ONNX graph (one input, one output) run with ``backend``; :meth:`run` maps numpy to numpy."""

    def __init__(self, model: onnx.ModelProto | Path | str, backend: Backend = NUMPY) -> None:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        graph = proto.graph
        if len(graph.input) != 1 or len(graph.output) != 1:
            raise UnsupportedGraph(f"graph {graph.name!r}: one input and one output expected")
        self.backend = backend
        self.input_name = graph.input[0].name
        self.output_name = graph.output[0].name
        self._nodes = tuple(self._node(n) for n in graph.node)
        self._constants = {t.name: backend.to_device(numpy_helper.to_array(t)) for t in graph.initializer}

    @staticmethod
    def _node(n: onnx.NodeProto) -> _Node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS:
            raise UnsupportedGraph(f"operator {n.domain + '.' if n.domain else ''}{n.op_type} "
                                   f"(node {n.name!r}) is not one of {', '.join(SUPPORTED_OPS)}")
        to = None
        if n.op_type == "Cast":
            attrs = {a.name: a for a in n.attribute}
            to = int(attrs["to"].i) if "to" in attrs else -1
            if to not in _NUMPY_TYPES:
                raise UnsupportedGraph(f"Cast to ONNX type {to} (node {n.name!r})")
        return _Node(n.op_type, tuple(n.input), tuple(n.output), to)

    def run(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return self.backend.to_numpy(self.run_on_device(self.backend.to_device(x)))

    def run_on_device(self, x: Any) -> Any:
        """The walk on an input already on the backend's device; the output stays there."""
        b = self.backend
        values: dict[str, Any] = {**self._constants, self.input_name: x}
        for node in self._nodes:
            args: Sequence[Any] = [values[i] for i in node.inputs]
            if node.op == "Greater":
                out = b.greater(args[0], args[1])
            elif node.op == "Less":
                out = b.less(args[0], args[1])
            elif node.op == "Cast":
                assert node.to is not None
                out = b.cast(args[0], node.to)
            elif node.op == "Sum":
                out = functools.reduce(b.add, args)
            else:  # Mul
                out = b.mul(args[0], args[1])
            values[node.outputs[0]] = out
        return values[self.output_name]
