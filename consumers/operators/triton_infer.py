"""Triton inference: tritonclient over gRPC (default) or HTTP, binary tensors, timeouts,
retries with exponential backoff, readiness checks, tensor names and types from the server."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from radstream.consumers.operators.base import Context, Operator, OperatorError, Params, RetriableError
from radstream.consumers.operators.triton_shm import Region, ShmRegions, ShmUnavailable

from radstream.pipelines.operators_spec import InferencePipelineSpec
from radstream.secrets import triton_access_token
from radstream.settings import Settings

log = logging.getLogger(__name__)

_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
       "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT16": np.uint16, "BOOL": np.bool_}
_RETRIABLE_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
                   "StatusCode.CANCELLED", "StatusCode.UNKNOWN"}


class TritonParams(Params):
    protocol: Literal["grpc", "http"] | None = None
    timeout_s: float | None = None
    retries: int | None = None
    collect_statistics: bool = False  # read Triton's compute time around each call (benchmarks)
    batch_dim: bool = False  # the model batches (max_batch_size > 0): send [1, ...] and strip it from outputs


@dataclass
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]


@dataclass
class ModelMeta:
    name: str
    version: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


class TritonUnavailable(RetriableError):
    pass


def _is_retriable(exc: BaseException) -> bool:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        msg = str(exc.message() or "").lower()
        if status in _RETRIABLE_GRPC or (status in ("400", "") and ("unavailable" in msg or "not ready" in msg)):
            return True
        return ("connect" in msg or "unavailable" in msg or "timed out" in msg or "deadline" in msg
                or "shared memory region" in msg)  # a restarted server forgot ours: registered again
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def _fixed_nbytes(t: TensorMeta) -> int | None:
    """The byte size of a tensor whose shape the model fixes; None when a dimension varies."""
    if t.datatype not in _NP or not t.shape or any(d < 0 for d in t.shape):
        return None
    return int(np.prod(t.shape)) * np.dtype(_NP[t.datatype]).itemsize


def _output_shape(output: Any) -> list[int]:
    """An output's shape from the response (gRPC: a message; HTTP: a dict)."""
    return list(output["shape"] if isinstance(output, dict) else output.shape)


class TritonClient:
    """One protocol's client with readiness, metadata, inference and statistics; reconnects on demand."""

    def __init__(self, settings: Settings, protocol: str, timeout_s: float) -> None:
        t = settings.triton
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.url = f"{t.host}:{t.grpc_port if protocol == 'grpc' else t.http_port}"
        self._client: Any = None
        # same host: tensors through system shared memory, only names and sizes on the socket
        self.shm: ShmRegions | None = None
        if t.use_shared_memory:
            token = triton_access_token(settings)
            header = "triton-grpc-protocol-triton-access-token" if protocol == "grpc" else "triton-access-token"
            self.shm = ShmRegions(self.client, {header: token} if token else None)

    def client(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as g

                self._client = g.InferenceServerClient(self.url)
            else:
                import tritonclient.http as h

                self._client = h.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        return self._client

    def reset(self) -> None:
        if self.shm is not None:  # a restarted server has forgotten the regions: registered again on use
            self.shm.release()
        if self._client is not None:
            with contextlib.suppress(Exception):  # closing a broken client
                self._client.close()
        self._client = None

    def ready(self, model: str, version: str) -> bool:
        c = self.client()
        return bool(c.is_server_live() and c.is_server_ready() and c.is_model_ready(model, version))

    def metadata(self, model: str, version: str) -> ModelMeta:
        c = self.client()
        md: Any = c.get_model_metadata(model, version, as_json=True) if self.protocol == "grpc" else \
            c.get_model_metadata(model, version)
        versions = md.get("versions") or [version]

        def tensors(key: str) -> list[TensorMeta]:
            return [TensorMeta(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in md.get(key, [])]

        return ModelMeta(md["name"], version or str(max(int(v) for v in versions)), tensors("inputs"),
                         tensors("outputs"))

    def infer(self, meta: ModelMeta, arrays: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """One request; each tensor in the model's declared type. With shared memory, inputs go through
        regions and so do outputs whose size the model's metadata fixes (others come back on the socket);
        a server that refuses shared memory gets this and every later request on the socket."""
        try:
            return self._infer(meta, arrays)
        except ShmUnavailable as exc:
            log.warning("%s: sending tensors on the socket", exc)
            assert self.shm is not None
            self.shm.release()
            self.shm = None
            return self._infer(meta, arrays)

    def _infer(self, meta: ModelMeta, arrays: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        if self.protocol == "grpc":
            import tritonclient.grpc as lib
        else:
            import tritonclient.http as lib
        binary = {} if self.protocol == "grpc" else {"binary_data": True}
        inputs = []
        for t in meta.inputs:
            x = np.ascontiguousarray(arrays[t.name], dtype=_NP[t.datatype])
            i = lib.InferInput(t.name, list(x.shape), t.datatype)
            if self.shm is not None:
                i.set_shared_memory(self.shm.write(f"in:{t.name}", x).name, x.nbytes)
            else:
                i.set_data_from_numpy(x, **binary)
            inputs.append(i)
        outputs: list[Any] = []
        out_regions: dict[str, Region] = {}
        for t in meta.outputs:
            o = lib.InferRequestedOutput(t.name, **binary)
            nbytes = _fixed_nbytes(t)
            if self.shm is not None and nbytes is not None:
                out_regions[t.name] = r = self.shm.region(f"out:{t.name}", nbytes)
                o.set_shared_memory(r.name, nbytes)
            outputs.append(o)
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        res = self.client().infer(meta.name, inputs, model_version=meta.version, outputs=outputs, **timeout)
        out = {}
        for t in meta.outputs:
            region = out_regions.get(t.name)
            if region is None:
                out[t.name] = np.asarray(res.as_numpy(t.name))
            else:
                shape = [int(v) for v in _output_shape(res.get_output(t.name))]
                out[t.name] = ShmRegions.read(region, _NP[t.datatype], shape)
        return out

    def compute_ns(self, meta: ModelMeta) -> tuple[int, int]:
        """(total compute ns, request count) so far, from Triton's statistics extension."""
        c = self.client()
        st: Any = c.get_inference_statistics(meta.name, meta.version, as_json=True) \
            if self.protocol == "grpc" else c.get_inference_statistics(meta.name, meta.version)
        s = st["model_stats"][0]["inference_stats"]
        total = sum(int(s.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output"))
        return total, int(s.get("success", {}).get("count", 0))


class TritonInference(Operator):
    op = "triton_infer"
    Params = TritonParams

    def __init__(self, settings: Settings, pipeline: InferencePipelineSpec, params: dict[str, Any]) -> None:
        super().__init__(settings, pipeline, params)
        p: TritonParams = self.params
        m = pipeline.model
        self.protocol = p.protocol or m.protocol or settings.triton.protocol
        self.timeout_s = p.timeout_s or m.timeout_s or settings.triton.request_timeout_s
        self.retries = settings.triton.retries if p.retries is None else p.retries
        self.client = TritonClient(settings, self.protocol, self.timeout_s)
        self._meta: ModelMeta | None = None

    def _with_retries(self, what: str, fn: Any) -> Any:
        t = self.settings.triton
        delay = t.backoff_initial_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except OperatorError:
                raise
            except Exception as exc:
                if not _is_retriable(exc) and not isinstance(exc, TritonUnavailable):
                    raise OperatorError(f"triton {what}: {exc}") from exc
                if attempt == self.retries:
                    raise TritonUnavailable(f"triton {what} failed after {attempt + 1} tries: {exc}") from exc
                log.warning("triton %s failed (%s); retry %d/%d in %.1fs", what, type(exc).__name__,
                            attempt + 1, self.retries, delay)
                self.client.reset()
                time.sleep(delay)
                delay = min(delay * 2, t.backoff_max_s)
        raise AssertionError("unreachable")

    def model_meta(self) -> ModelMeta:
        if self._meta is None:
            m = self.pipeline.model

            def fetch() -> ModelMeta:
                if not self.client.ready(m.name, m.version):
                    raise TritonUnavailable(f"model {m.name} version {m.version or 'latest'} is not ready")
                return self.client.metadata(m.name, m.version)

            meta = self._with_retries("readiness/metadata", fetch)
            names_in = [t.name for t in meta.inputs]
            names_out = [t.name for t in meta.outputs]
            if m.inputs and sorted(m.inputs) != sorted(names_in):
                raise OperatorError(f"pipeline expects inputs {m.inputs}, server has {names_in}")
            if m.outputs and not set(m.outputs) <= set(names_out):
                raise OperatorError(f"pipeline expects outputs {m.outputs}, server has {names_out}")
            if len(meta.inputs) != 1:
                raise OperatorError("triton_infer feeds models with one input tensor")
            self._meta = meta
        return self._meta

    def run(self, ctx: Context) -> None:
        if not ctx.model_inputs:
            raise OperatorError("triton_infer: no model input (load_series first)")
        meta = self.model_meta()
        ctx.model_version = meta.version
        name = meta.inputs[0].name
        outputs = []
        before = self.client.compute_ns(meta) if self.params.collect_statistics else None
        for x in ctx.model_inputs:
            if self.params.batch_dim:
                x = np.asarray(x)[None, ...]
            res = self._with_retries("infer", lambda x=x: self.client.infer(meta, {name: x}))
            out = res[meta.outputs[0].name]
            outputs.append(out[0] if self.params.batch_dim else out)
        if before is not None:
            after = self.client.compute_ns(meta)
            ctx.notes["triton_compute_ms"] = (after[0] - before[0]) / 1e6
            ctx.notes["triton_requests"] = after[1] - before[1]
        ctx.model_outputs = outputs

    def close(self) -> None:
        self.client.reset()
