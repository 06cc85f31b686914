"""deepbet's brain-extraction networks as ONNX, rebuilt without PyTorch.

deepbet 1.0.2 (PyPI, MIT, https://github.com/wwu-mmll/deepbet) ships its trained weights inside its
wheel as two TorchScript archives (``data/models/bbox_model.pt``: a 128³ bounding-box net, and
``data/models/model.pt``: a 256³ segmentation net, both a 3D LinkNet). Exporting them with
``torch.onnx`` needs PyTorch, whose PyPI wheel only imports with its CUDA wheels (gigabytes), so this
module reads the archives directly: a TorchScript file is a zip holding ``data.pkl`` (the module tree
and its tensors as a pickle whose tensors point at raw ``data/<key>`` storages) and ``code/`` (each
module class's TorchScript source, where the convolution, pooling and normalisation arguments are
spelled out). The network is rebuilt node by node with the ``onnx`` helper API, the weights copied
over; the topology is deepbet's ``LinkNet3d`` (checked against the archive's module tree, and each
layer's arguments read from its own code).

Third-party weights are never committed: :func:`fetch_wheel` downloads the wheel into the cache
(``pip download deepbet==1.0.2 --no-deps``, checked against its sha256) and
:func:`build_repository` writes the Triton model folders into the cache.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEEPBET_VERSION = "1.0.2"
WHEEL_NAME = f"deepbet-{DEEPBET_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "1999e2ea00ec48f6233b95b96f3901a962d3f70431c63aeb985e8a49a198473c"
DEFAULT_CACHE = Path.home() / ".cache" / "radstream" / "deepbet"
OPSET = 17

BBOX_MODEL = "deepbet_bbox"
BRAIN_MODEL = "deepbet_brain"
NETWORKS = {BBOX_MODEL: "data/models/bbox_model.pt", BRAIN_MODEL: "data/models/model.pt"}
INPUT_SHAPES = {BBOX_MODEL: (128, 128, 128), BRAIN_MODEL: (256, 256, 256)}
INPUT_NAME, OUTPUT_NAME = "image", "brain_probability"
NOTE = (f"deepbet {DEEPBET_VERSION} (MIT, Fisch et al., Comput Biol Med 2024) rebuilt as ONNX by "
        "radstream.models.deepbet from the weights in its wheel")


Transport = Literal["float16", "float32"]
_WIRE = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}


class DeepbetError(RuntimeError):
    pass


@dataclass
class ScriptModule:
    """One module of a TorchScript archive: its class name, attributes and tensors."""

    cls: str
    children: dict[str, ScriptModule] = field(default_factory=dict)
    tensors: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)


class _Placeholder:
    _cls = ""

    def __init__(self, *_args: object) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


_STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                   "LongStorage": np.int64, "IntStorage": np.int32}


class TorchScriptArchive:
    """Read a TorchScript ``.pt`` zip without torch: module tree, tensors and class code."""

    def __init__(self, data: bytes) -> None:
        import io

        self._zip = zipfile.ZipFile(io.BytesIO(data))
        names = self._zip.namelist()
        if not names or not any(n.endswith("/data.pkl") for n in names):
            raise DeepbetError("not a TorchScript archive (no data.pkl)")
        self._root = next(n for n in names if n.endswith("/data.pkl")).rsplit("/", 1)[0]
        self.root = self._to_module(self._unpickle())

    def _unpickle(self) -> object:
        archive = self

        def rebuild(storage: tuple[Any, ...], offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_rest: object) -> np.ndarray[Any, Any]:
            _, kind, key = storage[0], storage[1], storage[2]
            if kind not in _STORAGE_DTYPES:
                raise DeepbetError(f"unsupported tensor storage {kind}")
            flat = np.frombuffer(archive._zip.read(f"{archive._root}/data/{key}"), dtype=_STORAGE_DTYPES[kind])
            item = flat.itemsize
            view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * item for s in stride])
            return np.array(view, copy=True)

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return rebuild
                if module == "torch" and name.endswith("Storage"):
                    return name
                if module == "collections" and name == "OrderedDict":
                    import collections

                    return collections.OrderedDict
                if module.startswith("__torch__"):
                    return type(name, (_Placeholder,), {"_cls": f"{module}.{name}"})
                raise DeepbetError(f"unexpected global in TorchScript pickle: {module}.{name}")

            def persistent_load(self, pid: Any) -> Any:
                return pid

        with self._zip.open(f"{self._root}/data.pkl") as f:
            return Unpickler(f).load()

    def _to_module(self, obj: object) -> ScriptModule:
        if not isinstance(obj, _Placeholder) or not isinstance(obj.state, dict):
            raise DeepbetError("unexpected object in the module tree")
        mod = ScriptModule(cls=obj._cls)
        for key, value in obj.state.items():
            if isinstance(value, _Placeholder):
                mod.children[key] = self._to_module(value)
            elif isinstance(value, np.ndarray):
                mod.tensors[key] = value
        return mod

    def class_code(self, cls: str) -> str:
        """The TorchScript source of class ``cls`` (``__torch__.a.b.Name`` is in ``code/__torch__/a/b.py``)."""
        module, _, name = cls.rpartition(".")
        path = f"{self._root}/code/{module.replace('.', '/')}.py"
        try:
            text = self._zip.read(path).decode()
        except KeyError as exc:
            raise DeepbetError(f"no code for {cls}") from exc
        m = re.search(rf"^class {re.escape(name)}\(Module\):\n(.*?)(?=^class |\Z)", text, re.S | re.M)
        if m is None:
            raise DeepbetError(f"class {name} not in {path}")
        return m.group(1)


_INTS = r"\[([\d, ]+)\]"
_CONV = re.compile(rf"torch\._convolution\(\w+, weight, (None|bias), {_INTS}, {_INTS}, {_INTS}, (True|False), "
                   rf"{_INTS}, (\d+),")
_POOL = re.compile(rf"torch\.max_pool3d\(\w+, {_INTS}, {_INTS}, {_INTS}, {_INTS}")
_NORM = re.compile(r"torch\.instance_norm\(\w+, None, None, None, None, True, [\d.e-]+, ([\d.e-]+),")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


class _Graph:
    def __init__(self, archive: TorchScriptArchive) -> None:
        self.archive = archive
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._ones: dict[int, tuple[str, str]] = {}

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, base: str, array: np.ndarray[Any, Any]) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, mod: ScriptModule, x: str, path: str) -> str:
        m = _CONV.search(self.archive.class_code(mod.cls))
        if m is None:
            raise DeepbetError(f"{path}: no convolution in {mod.cls}")
        has_bias, stride, pad, dilation, transposed, out_pad, groups = m.groups()
        inputs = [x, self.init(f"{path}.weight", mod.tensors["weight"])]
        if has_bias == "bias":
            inputs.append(self.init(f"{path}.bias", mod.tensors["bias"]))
        attrs: dict[str, Any] = {"strides": _ints(stride), "pads": _ints(pad) * 2, "dilations": _ints(dilation),
                                 "group": int(groups), "kernel_shape": list(mod.tensors["weight"].shape[2:])}
        if transposed == "True":
            return self.node("ConvTranspose", inputs, path, output_padding=_ints(out_pad), **attrs)
        return self.node("Conv", inputs, path, **attrs)

    def norm(self, mod: ScriptModule, x: str, channels: int, path: str) -> str:
        m = _NORM.search(self.archive.class_code(mod.cls))
        if m is None:
            raise DeepbetError(f"{path}: {mod.cls} is not a non-affine instance norm")
        if channels not in self._ones:
            self._ones[channels] = (self.init(f"ones{channels}", np.ones(channels)),
                                    self.init(f"zeros{channels}", np.zeros(channels)))
        scale, bias = self._ones[channels]
        return self.node("InstanceNormalization", [x, scale, bias], path, epsilon=float(m.group(1)))

    def pool(self, mod: ScriptModule, x: str, path: str) -> str:
        m = _POOL.search(self.archive.class_code(mod.cls))
        if m is None:
            raise DeepbetError(f"{path}: no max_pool3d in {mod.cls}")
        kernel, stride, pad, dilation = (_ints(g) for g in m.groups())
        return self.node("MaxPool", [x], path, kernel_shape=kernel, strides=stride, pads=pad * 2, dilations=dilation)

    def relu(self, x: str, path: str) -> str:
        return self.node("Relu", [x], path)

    def sequential(self, seq: ScriptModule, x: str, path: str) -> tuple[str, int]:
        """Conv/ConvTranspose, InstanceNorm, ReLU and MaxPool in the order of their keys."""
        channels = 0
        for key in sorted(seq.children, key=int):
            child, sub = seq.children[key], f"{path}.{key}"
            kind = child.cls.rsplit(".", 1)[1]
            if kind == "Conv3d":
                x, channels = self.conv(child, x, sub), int(child.tensors["weight"].shape[0])
            elif kind == "ConvTranspose3d":
                x, channels = self.conv(child, x, sub), int(child.tensors["weight"].shape[1])
            elif kind == "InstanceNorm3d":
                x = self.norm(child, x, channels, sub)
            elif kind == "ReLU":
                x = self.relu(x, sub)
            elif kind == "MaxPool3d":
                x = self.pool(child, x, sub)
            else:
                raise DeepbetError(f"{sub}: unsupported layer {kind}")
        return x, channels

    def block(self, blk: ScriptModule, x: str, path: str) -> str:
        y, _ = self.sequential(blk.children["double_conv"], x, f"{path}.double_conv")
        skip = x
        if "downsample" in blk.children:
            skip, _ = self.sequential(blk.children["downsample"], x, f"{path}.downsample")
        return self.relu(self.node("Add", [y, skip], f"{path}.add"), f"{path}.act")

    def up(self, up: ScriptModule, x: str, path: str) -> str:
        for part in ("conv1", "tp_conv", "conv2"):
            x, _ = self.sequential(up.children[part], x, f"{path}.{part}")
        return x


def _expect(mod: ScriptModule, names: list[str], path: str) -> None:
    missing = [n for n in names if n not in mod.children]
    if missing:
        raise DeepbetError(f"{path or 'network'}: not deepbet's LinkNet3d (missing {', '.join(missing)})")


def linknet3d_onnx(archive: TorchScriptArchive, name: str, spatial: tuple[int, int, int],
                   transport: Transport = "float16") -> onnx.ModelProto:
    """deepbet's LinkNet3d as ONNX: input ``image`` [1,1,*spatial], output ``brain_probability`` [1,1,*spatial]
    (softmax channel 1, the only one deepbet reads). The network computes in float32 either way;
    ``transport`` is the tensors' type on the wire: float16 halves what a request carries (a 256³
    volume is 33.5 MB instead of 67 MB each way), cast on entry and on exit inside the graph."""
    net = archive.root
    if not net.cls.endswith(".LinkNet3d"):
        raise DeepbetError(f"expected a LinkNet3d, found {net.cls}")
    _expect(net, ["init", "down0", "down1", "down2", "down3", "up0", "up1", "up2", "up3", "tp_conv1", "conv",
                  "tp_conv2"], "")
    g = _Graph(archive)
    wire = _WIRE[transport]
    x_in = INPUT_NAME if wire == TensorProto.FLOAT else g.node("Cast", [INPUT_NAME], "to_float32", to=TensorProto.FLOAT)
    x0, _ = g.sequential(net.children["init"], x_in, "init")
    downs = [x0]
    for i in range(4):
        down = net.children[f"down{i}"]
        _expect(down, ["block1", "block2"], f"down{i}")
        x = g.block(down.children["block1"], downs[-1], f"down{i}.block1")
        downs.append(g.block(down.children["block2"], x, f"down{i}.block2"))
    # forward(): up0(down3) + down2, up1(.) + down1, up2(.) + down0, up3(.) + init
    y = downs[4]
    for i in range(4):
        y = g.node("Add", [g.up(net.children[f"up{i}"], y, f"up{i}"), downs[3 - i]], f"skip{i}")
    y, _ = g.sequential(net.children["tp_conv1"], y, "tp_conv1")
    y, _ = g.sequential(net.children["conv"], y, "conv")
    logits = g.conv(net.children["tp_conv2"], y, "tp_conv2")
    probs = g.node("Softmax", [logits], "softmax", axis=1)
    starts, ends, axes = (g.name(n) for n in ("starts", "ends", "axes"))
    g.inits += [numpy_helper.from_array(np.array([v], dtype=np.int64), n)
                for n, v in ((starts, 1), (ends, 2), (axes, 1))]
    if wire == TensorProto.FLOAT:
        g.nodes.append(helper.make_node("Slice", [probs, starts, ends, axes], [OUTPUT_NAME], name="brain_channel"))
    else:
        brain = g.node("Slice", [probs, starts, ends, axes], "brain_channel")
        g.nodes.append(helper.make_node("Cast", [brain], [OUTPUT_NAME], name="to_wire", to=wire))
    shape = [1, 1, *spatial]
    graph = helper.make_graph(g.nodes, name,
                              [helper.make_tensor_value_info(INPUT_NAME, wire, shape)],
                              [helper.make_tensor_value_info(OUTPUT_NAME, wire, shape)],
                              initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="radstream.models.deepbet")
    model.ir_version = 8
    model.doc_string = NOTE
    onnx.checker.check_model(model)
    return model


def fetch_wheel(cache: Path = DEFAULT_CACHE, runner: Callable[..., Any] = subprocess.run) -> Path:
    """deepbet's wheel in ``cache`` (downloaded once with pip, no dependencies), sha256-checked."""
    wheel = cache / WHEEL_NAME
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        runner([sys.executable, "-m", "pip", "download", f"deepbet=={DEEPBET_VERSION}", "--no-deps",
                "--only-binary=:all:", "-d", str(cache), "-q"], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise DeepbetError(f"{wheel}: sha256 {digest} is not deepbet {DEEPBET_VERSION}'s ({WHEEL_SHA256})")
    return wheel


def archives(wheel: Path) -> dict[str, TorchScriptArchive]:
    with zipfile.ZipFile(wheel) as z:
        return {model: TorchScriptArchive(z.read(member)) for model, member in NETWORKS.items()}


def config_pbtxt(name: str, spatial: tuple[int, int, int], kind: str = "KIND_GPU",
                 transport: Transport = "float16") -> str:
    dims = ", ".join(str(d) for d in (1, 1, *spatial))
    t = "TYPE_FP16" if transport == "float16" else "TYPE_FP32"
    return (
        f"# {NOTE}\n"
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f'input [\n  {{\n    name: "{INPUT_NAME}"\n    data_type: {t}\n    dims: [ {dims} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "{OUTPUT_NAME}"\n    data_type: {t}\n    dims: [ {dims} ]\n  }}\n]\n'
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
    )


def build_repository(out: Path, cache: Path = DEFAULT_CACHE, transport: Transport = "float16",
                     suffix: str = "") -> list[Path]:
    """Write ``<out>/deepbet_bbox`` and ``<out>/deepbet_brain`` (``1/model.onnx`` + ``config.pbtxt``);
    ``suffix`` names a twin (e.g. ``_fp32`` for the transport benchmark)."""
    written = []
    for model, archive in archives(fetch_wheel(cache)).items():
        spatial = INPUT_SHAPES[model]
        folder = out / f"{model}{suffix}"
        (folder / "1").mkdir(parents=True, exist_ok=True)
        path = folder / "1" / "model.onnx"
        onnx.save(linknet3d_onnx(archive, folder.name, spatial, transport), str(path))
        (folder / "config.pbtxt").write_text(config_pbtxt(folder.name, spatial, transport=transport))
        written.append(path)
    return written


def onnx_session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """One call, the input cast to the session's wire type; probabilities back as float32."""
    wire = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    out = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(wire)})[0]
    return cast("np.ndarray[Any, Any]", np.asarray(out, dtype=np.float32))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_CACHE / "triton")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    for p in build_repository(a.out, a.cache):
        print(p)


if __name__ == "__main__":
    main()


# --- deepbet's pre- and post-processing (deepbet/bet.py, run_model and postprocess), in numpy/SimpleITK.
# Arrays are in deepbet's canonical orientation: axes (x, y, z) pointing to R, A, S.

def resize_nearest_exact(x: np.ndarray[Any, Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """torch's ``F.interpolate(mode="nearest-exact")``: source index floor((i + 0.5) * in / out)."""
    out = x
    for axis, (n_in, n_out) in enumerate(zip(x.shape, shape, strict=True)):
        idx = np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)
        out = np.take(out, idx, axis=axis)
    return out


def deepbet_normalise(x: np.ndarray[Any, Any], low: float, high: float) -> np.ndarray[Any, Any]:
    """deepbet's ``normalize``: window [low, high] to [0, 1], clamp, z-score (unbiased std), * .226 + .449."""
    y = np.clip((x.astype(np.float32) - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
    y = (y - y.mean(dtype=np.float64)) / y.std(ddof=1, dtype=np.float64)
    out: np.ndarray[Any, Any] = (0.226 * y + 0.449).astype(np.float32)
    return out


def largest_component(mask: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The largest 26-connected component of a binary mask (deepbet: cc3d's default connectivity)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(img, True), sortByObjectSize=True)
    return np.asarray(sitk.GetArrayFromImage(cc) == 1, dtype=bool)


def fill_holes(mask: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Fill the background regions not connected to the border (deepbet: ``fill_voids.fill``)."""
    import SimpleITK as sitk

    img = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)), fullyConnected=False)
    return np.asarray(sitk.GetArrayFromImage(img) > 0, dtype=bool)


def bbox_with_margin(mask_small: np.ndarray[Any, Any], shape: tuple[int, int, int], margin: float = 0.1,
                     threshold: float = 0.02) -> tuple[slice, slice, slice]:
    """deepbet's ``get_bbox_with_margin``: the foreground's extent in ``mask_small``, scaled to ``shape``."""
    bounds = []
    for axis, dims in enumerate(((1, 2), (0, 2), (0, 1))):
        r = np.nonzero(mask_small.mean(axis=dims) > threshold)[0]
        if r.size == 0:
            raise DeepbetError("not enough foreground to find the brain's bounding box")
        scale = shape[axis] / mask_small.shape[axis]
        center = scale * (r.max() + 1 + r.min()) / 2.0
        size = (1 + 2 * margin) * scale * ((r.max() + 1) - r.min())
        center, size = float(np.round(center)), float(np.round(size))  # torch.round: half to even, as numpy
        bounds.append(slice(max(0, int(center - size / 2)), min(shape[axis], int(center + size / 2)), 1))
    return bounds[0], bounds[1], bounds[2]


def brain_probability(x: np.ndarray[Any, Any], bbox_net: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]],
                      brain_net: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]],
                      small_shape: tuple[int, int, int] = (128, 128, 128),
                      shape: tuple[int, int, int] = (256, 256, 256), margin: float = 0.1,
                      ) -> tuple[np.ndarray[Any, Any], tuple[slice, slice, slice]]:
    """deepbet's ``run_model``: each net maps a [1,1,D,H,W] float32 input to [1,1,D,H,W] probabilities."""
    x = np.nan_to_num(x.astype(np.float32))
    small = resize_nearest_exact(x, small_shape)
    low, high = (float(v) for v in np.quantile(small, [0.005, 0.995]))
    p_small = bbox_net(deepbet_normalise(small, low, high)[None, None])[0, 0]
    bbox = bbox_with_margin(largest_component(p_small > 0.5).astype(np.float32), x.shape, margin)  # type: ignore[arg-type]
    crop = resize_nearest_exact(x[bbox], shape)
    p_crop = brain_net(deepbet_normalise(crop, low, high)[None, None])[0, 0]
    prob = np.zeros_like(x)
    prob[bbox] = resize_nearest_exact(p_crop, prob[bbox].shape)
    return prob, bbox


def brain_mask(prob: np.ndarray[Any, Any], bbox: tuple[slice, slice, slice], threshold: float = 0.5,
               ) -> np.ndarray[Any, Any]:
    """deepbet's ``postprocess`` (n_dilate=0): threshold, largest component and hole filling in the box."""
    mask = prob > threshold
    mask[bbox] = fill_holes(largest_component(mask[bbox]))
    return mask
