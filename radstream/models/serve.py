"""Serve the reference models with a real Triton Inference Server on the CPU (nvidia-pytriton).

Each ONNX model from the model repository is loaded into an onnxruntime session (``--device cpu``,
the default) or run on a GPU by PyTorch (``--device cuda``, :mod:`radstream.models.graph_exec`) and
bound to Triton through pytriton; clients speak Triton's ordinary HTTP/gRPC protocols, so the same
clients work against NVIDIA's container serving ``docker/triton`` on a GPU.

Triton's Python-backend stub must find the *running* interpreter's ``libpython3.X.so``:
:func:`libpython_env` gives the ``LD_LIBRARY_PATH`` for that, and :func:`serve` re-executes
itself once with it set when it is missing (it must be set before the process starts).
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radstream.models.specs import REFERENCE_MODELS, WAIT_MODEL, ModelSpec

log = logging.getLogger(__name__)
_ATTEMPT_ENV = "RADSTREAM_TRITON_START_ATTEMPT"  # set by serve() itself when it starts again


def libpython_dir() -> str:
    return str(sysconfig.get_config_var("LIBDIR"))


def libpython_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) with the interpreter's libpython directory first in LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    lib = libpython_dir()
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    if not parts or parts[0] != lib:
        env["LD_LIBRARY_PATH"] = ":".join([lib, *[p for p in parts if p != lib]])
    return env


@dataclass
class ServeOptions:
    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    wait_ms: float = 50.0
    wait_max_batch: int = 16
    wait_queue_delay_us: int = 2000
    wait_instances: int = 4
    """Instances of the wait model (as streams on a busy GPU): each batches what queues for it and waits
    once per batch, and up to this many batches wait at the same time. With one instance, callers
    that drift out of phase wait for the batch in progress before their own."""
    ort_threads: int = 1
    model_threads: int = 0
    """onnxruntime threads of each other ONNX model in the repository (real networks such as deepbet's);
    0: onnxruntime's default, one per core."""
    device: str = "cpu"
    """Where the reference models compute: "cpu" (onnxruntime) or a torch device such as "cuda"."""
    start_attempts: int = 3
    """Times to start Triton when a model fails to load (pytriton's multi-instance start races on a busy CPU)."""
    workspace: Path | None = None
    model_version: int | None = None
    """Serve each reference model under this version instead of its own (e.g. 2: a second version for
    shadow and replay tests). pytriton cannot serve two versions of one model in one server (its proxy
    sockets are named by model name), so a second version runs as a second server."""


def _onnx_infer(
    spec: ModelSpec, model_path: Path, threads: int
) -> Callable[[list[Any]], list[dict[str, np.ndarray[Any, Any]]]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
    in_name, out_name = spec.inputs[0].name, spec.outputs[0].name

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray[Any, Any]]]:
        return [{out_name: session.run([out_name], {in_name: np.asarray(r[in_name], dtype=np.float32)})[0]}
                for r in requests]

    return infer


def _torch_infer(
    spec: ModelSpec, model_path: Path, device: str
) -> Callable[[list[Any]], list[dict[str, np.ndarray[Any, Any]]]]:
    from radstream.models.graph_exec import GraphRunner, torch_backend

    runner = GraphRunner(model_path, torch_backend(device))
    in_name, out_name = spec.inputs[0].name, spec.outputs[0].name

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray[Any, Any]]]:
        return [{out_name: runner.run(np.asarray(r[in_name], dtype=np.float32))} for r in requests]

    return infer


def _wait_infer(wait_s: float) -> Callable[[list[Any]], list[dict[str, np.ndarray[Any, Any]]]]:
    def infer(requests: list[Any]) -> list[dict[str, np.ndarray[Any, Any]]]:
        time.sleep(wait_s)  # stands in for time spent waiting on a busy accelerator
        return [{"y": np.asarray(r["x"], dtype=np.float32)} for r in requests]

    return infer


def _tensor(name: str, dtype: str, dims: Sequence[int]) -> Any:
    from pytriton.model_config import Tensor

    return Tensor(name=name, dtype=np.dtype(dtype).type, shape=tuple(dims))


def ensure_repository(repository: Path) -> None:
    missing = [s for s in REFERENCE_MODELS if not (repository / s.name / s.version / "model.onnx").exists()]
    if missing:
        from radstream.models.build import build_repository

        build_repository(repository)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(double)": "float64"}


def extra_models(repository: Path) -> list[tuple[str, int, Path]]:
    """Other ONNX models in the repository (``<name>/<version>/model.onnx``, e.g. deepbet's networks
    from ``radstream models build --deepbet``): name, highest version, path."""
    known = {s.name for s in REFERENCE_MODELS} | {WAIT_MODEL}
    found = []
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and p.name not in known) \
            if repository.is_dir() else []:
        versions = sorted((int(v.name), v / "model.onnx") for v in folder.iterdir()
                          if v.name.isdigit() and (v / "model.onnx").exists())
        if versions:
            found.append((folder.name, *versions[-1]))
    return found


def _bind_onnx_model(triton: Any, name: str, version: int, path: Path, threads: int) -> None:
    """Any ONNX model, its tensors as the file declares them (symbolic dimensions become -1)."""
    import onnxruntime as ort
    from pytriton.model_config import ModelConfig

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

    def spec(t: Any) -> Any:
        if t.type not in _ORT_TYPES:
            raise ValueError(f"{path}: tensor {t.name} has unsupported type {t.type}")
        return _tensor(t.name, _ORT_TYPES[t.type], [d if isinstance(d, int) else -1 for d in t.shape])

    ins, outs = session.get_inputs(), session.get_outputs()
    names = [o.name for o in outs]

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray[Any, Any]]]:
        results = []
        for r in requests:
            feed = {t.name: np.asarray(r[t.name], dtype=_ORT_TYPES[t.type]) for t in ins}
            results.append(dict(zip(names, session.run(names, feed), strict=True)))
        return results

    triton.bind(model_name=name, infer_func=infer, inputs=[spec(t) for t in ins], outputs=[spec(t) for t in outs],
                model_version=version, config=ModelConfig(batching=False), strict=True)


def _bind_models(triton: Any, opts: ServeOptions) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig

    for name, version, path in extra_models(opts.repository):
        _bind_onnx_model(triton, name, version, path, opts.model_threads)

    for spec in REFERENCE_MODELS:
        path = opts.repository / spec.name / spec.version / "model.onnx"
        triton.bind(
            model_name=spec.name,
            infer_func=(_onnx_infer(spec, path, opts.ort_threads) if opts.device == "cpu"
                        else _torch_infer(spec, path, opts.device)),
            inputs=[_tensor(t.name, t.dtype, t.dims) for t in spec.inputs],
            outputs=[_tensor(t.name, t.dtype, t.dims) for t in spec.outputs],
            model_version=opts.model_version or int(spec.version),
            config=ModelConfig(batching=False),
            strict=True,
        )
    # the wait model batches what queues for it and waits once per batch, as a busy GPU does;
    # a list of callables = that many Triton model instances (each a proxy process of its own)
    triton.bind(
        model_name=WAIT_MODEL,
        infer_func=[_wait_infer(opts.wait_ms / 1000.0) for _ in range(max(1, opts.wait_instances))],
        inputs=[_tensor("x", "float32", (-1, -1))],
        outputs=[_tensor("y", "float32", (-1, -1))],
        config=ModelConfig(batching=True, max_batch_size=opts.wait_max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=opts.wait_queue_delay_us)),
    )


TOKEN_ENV = "RADSTREAM_TRITON__ACCESS_TOKEN"


def serve(opts: ServeOptions) -> None:
    """Run Triton in the foreground until SIGTERM/SIGINT."""
    if os.environ.get("LD_LIBRARY_PATH", "").split(":")[0] != libpython_dir():
        # the stub reads LD_LIBRARY_PATH at its own start; set it for this process and re-exec once
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], libpython_env())
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    ensure_repository(opts.repository)
    config = TritonConfig(
        http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host, grpc_port=opts.grpc_port,
        metrics_port=opts.metrics_port, metrics_address=opts.host, allow_gpu_metrics=False,
        exit_on_error=True, log_verbose=0,
    )
    # statistics stay open (read-only: the inference operator reads compute times from them);
    # model-repository, shared-memory and the other control endpoints keep pytriton's token
    endpoints = [e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    # the token clients send for them (shared memory): the starter's (RADSTREAM_TRITON__ACCESS_TOKEN), else random
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    security = TritonSecurityConfig(access_token=token, restricted_endpoints=endpoints)
    attempt = int(os.environ.get(_ATTEMPT_ENV, "1"))
    if opts.workspace is not None and opts.workspace.exists():
        import shutil

        shutil.rmtree(opts.workspace)  # left by a killed server or a failed start; pytriton wants to create it
    with Triton(config=config, workspace=opts.workspace, security_config=security) as triton:
        try:
            _bind_models(triton, opts)
        except Exception as exc:
            # pytriton's model instances after the first fetch its config over a unix socket that the
            # first instance binds and then listens on; a busy CPU widens that gap and a loading
            # instance gets "ConnectionRefusedError" (pytriton does not retry). Start again below, in a
            # fresh process: pytriton cannot start a second server in one process (its tensor store's
            # manager rejects the new server's proxies: "AuthenticationError: digest sent was rejected").
            if attempt >= opts.start_attempts:
                raise
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.warning("a model failed to load (start %d of %d): %s; starting Triton again",
                        attempt, opts.start_attempts, first_line)
        else:
            log.info("triton serving reference models (%s) on http %d / grpc %d", opts.device,
                     opts.http_port, opts.grpc_port)
            triton.serve()
            return
    # same pid (pid files stay valid), same arguments; Triton above has stopped and freed its ports
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, _ATTEMPT_ENV: str(attempt + 1)})


def main() -> None:
    import argparse

    from radstream.models.build import DEFAULT_REPOSITORY

    ap = argparse.ArgumentParser(description="Triton (pytriton, CPU) serving the radstream reference models")
    ap.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--wait-ms", type=float, default=50.0)
    ap.add_argument("--wait-instances", type=int, default=4, help="instances of the wait_ref model")
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--model-version", type=int, default=None, help="serve the reference models as this version")
    ap.add_argument("--device", default="cpu", help="cpu (onnxruntime) or a torch device such as cuda")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(ServeOptions(repository=a.repository, http_port=a.http_port, grpc_port=a.grpc_port,
                       metrics_port=a.metrics_port, host=a.host, wait_ms=a.wait_ms, workspace=a.workspace,
                       wait_instances=a.wait_instances,
                       model_version=a.model_version, device=a.device))


if __name__ == "__main__":
    main()
