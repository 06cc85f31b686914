"""A MONAI bundle as a Triton model folder and a radstream pipeline file (``radstream models import-bundle``).

The layout read is MONAI's bundle specification (https://docs.monai.io/en/latest/mb_specification.html)::

    <bundle>/configs/metadata.json    network_data_format: inputs/outputs with type, format, modality,
                                      num_channels, spatial_shape, dtype, value_range, channel_def
    <bundle>/configs/inference.json   preprocessing (a Compose of transforms), inferer, postprocessing
    <bundle>/models/model.onnx        (or model.ts: TorchScript; model.pt: a state dict)

MONAI itself (PyPI ``monai``) needs PyTorch (``torch>=2.8``, gigabytes of CUDA wheels), so it is no
dependency: the files are read here as JSON, following the specification's field names and MONAI's config
syntax (``@id`` references with ``::``/``#``, ``$`` expressions only where they are plain literals).
Validating a bundle with ``monai.bundle`` (``python -m monai.bundle verify_metadata``) needs torch.

What is mapped (anything else is refused with a :class:`BundleError` naming the file and key, and nothing
is written: both outputs are built in temporary folders and moved into place at the end):

* the model: ``models/model.onnx`` is copied, wrapped so that Triton takes radstream's array order
  (``[B, 1, slices, rows, columns]``; MONAI's arrays are ``[B, C, x, y, z]``: a Transpose, plus the flips
  ``Orientationd`` asks for relative to an axial DICOM series' LPS axes). A one-channel output thresholded
  in ``postprocessing`` (``AsDiscreted threshold``, optionally after ``Activationsd sigmoid``) becomes two
  channels ``[threshold, output]`` so that radstream's argmax is that threshold. ``models/model.ts`` is
  converted only when it is deepbet's LinkNet3d (:mod:`radstream.models.deepbet` reads it without torch);
  any other TorchScript or ``model.pt`` is refused (export it to ONNX with ``torch.onnx.export``).
* ``Spacingd pixdim`` -> ``resample``; ``ScaleIntensityRanged``, ``ScaleIntensityRangePercentilesd``,
  ``NormalizeIntensityd``, ``ScaleIntensityd`` -> ``normalise`` (window / percentile / zscore, clip, affine);
  loading, channel and type transforms are what ``load_series`` already does.
* ``SlidingWindowInferer`` -> ``sliding_window_infer`` (roi_size reversed to (slices, rows, columns),
  overlap, sw_batch_size, mode, sigma_scale); ``SimpleInferer`` on a model with free spatial dimensions ->
  ``triton_infer`` + ``argmax``.
* ``KeepLargestConnectedComponentd`` -> ``connected_components largest_only``; the output's
  ``channel_def`` -> the label names of ``volumes`` and ``seg_writer``; then ``sr_writer``.

Known differences from MONAI: ``NormalizeIntensityd nonzero`` takes its statistics over non-zero voxels as
MONAI does but also shifts the zero voxels (MONAI leaves them 0); the resampling is linear whatever
``Spacingd mode`` says; orientation flips assume an axial series stored with rows to the patient's left
and columns to posterior (the pipeline's selection takes axial series only when ``Orientationd`` is given).
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
MODELS = Path("models")

DTYPES = {"float32": (TensorProto.FLOAT, "TYPE_FP32"), "float16": (TensorProto.FLOAT16, "TYPE_FP16")}
ONNX_TO_TRITON: dict[int, str] = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16"}
# DICOM/radstream axes of an axial series in MONAI's (x, y, z) order: columns -> L, rows -> P, slices -> S
LPS = "LPS"
OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}

# transforms that change nothing radstream's loader does not already do (reading, channel axis, types)
PASSIVE = {"LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "ToDevice", "Identity",
           "CastToType", "ToNumpy"}
# post-processing that radstream does its own way (writing, inverting onto the source grid)
PASSIVE_POST = PASSIVE | {"Invert", "SaveImage", "CopyItems"}


class BundleError(ValueError):
    """A bundle that cannot be imported: the file, the key and why."""


def refuse(path: Path, key: str, why: str) -> BundleError:
    return BundleError(f"{path}: {key}: {why}")


# --- reading the configs ---------------------------------------------------------------------------------

def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise refuse(path, "(file)", "missing: a MONAI bundle has configs/metadata.json and configs/inference.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise refuse(path, "(file)", f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise refuse(path, "(file)", "holds no JSON object")
    return data


def resolve(value: Any, config: dict[str, Any], path: Path, key: str, depth: int = 0) -> Any:
    """A config value with ``@id`` references followed and ``$<literal>`` expressions evaluated (literals only)."""
    if depth > 20:
        raise refuse(path, key, "reference cycle")
    if isinstance(value, str) and value.startswith("@"):
        node: Any = config
        for part in re.split(r"::|#", value[1:]):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise refuse(path, key, f"reference {value!r} names nothing in the file")
        return resolve(node, config, path, key, depth + 1)
    if isinstance(value, str) and value.startswith("$"):
        try:
            return ast.literal_eval(value[1:].strip())
        except (ValueError, SyntaxError) as exc:
            raise refuse(path, key, f"expression {value!r} is not a plain literal (needs MONAI to evaluate)") from exc
    if isinstance(value, str) and value.startswith("%"):
        raise refuse(path, key, f"macro {value!r} (another file) is not followed")
    return value


def target_name(target: Any, path: Path, key: str) -> str:
    """``monai.transforms.Spacingd`` / ``Spacingd`` / ``Spacing`` -> ``Spacing`` (dict and array forms alike)."""
    if not isinstance(target, str) or not target:
        raise refuse(path, f"{key}::_target_", "missing")
    name = target.rsplit(".", 1)[-1]
    return name[:-1] if name.endswith("d") and name[:-1] else name


@dataclass(frozen=True)
class Transform:
    name: str  # without the dict suffix
    args: dict[str, Any]
    key: str  # where it is, for errors


def transforms(config: dict[str, Any], path: Path, section: str) -> list[Transform]:
    """The transforms of ``section`` (a Compose or a list), disabled ones left out."""
    raw = resolve(config.get(section), config, path, section)
    if raw is None:
        return []
    items = raw.get("transforms") if isinstance(raw, dict) else raw
    base = f"{section}::transforms" if isinstance(raw, dict) else section
    items = resolve(items, config, path, base)
    if not isinstance(items, list):
        raise refuse(path, base, "expected a list of transforms")
    out = []
    for i, t in enumerate(items):
        key = f"{base}#{i}"
        t = resolve(t, config, path, key)
        if not isinstance(t, dict):
            raise refuse(path, key, "a transform is an object with _target_")
        if resolve(t.get("_disabled_", False), config, path, f"{key}::_disabled_") is True:
            continue
        name = target_name(t.get("_target_"), path, key)
        args = {k: resolve(v, config, path, f"{key}::{k}") for k, v in t.items() if not k.startswith("_")}
        out.append(Transform(name, args, f"{key} ({name}d)"))
    return out


# --- metadata.json ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorFormat:
    """One entry of ``network_data_format.inputs`` / ``outputs``."""

    key: str
    type: str
    num_channels: int
    spatial_shape: list[int | str]
    dtype: str
    channel_def: dict[int, str]
    modality: str | None
    where: str  # for errors


def tensor_format(meta: dict[str, Any], path: Path, kind: str) -> TensorFormat:
    ndf = meta.get("network_data_format")
    if not isinstance(ndf, dict):
        raise refuse(path, "network_data_format", "missing")
    entries = ndf.get(kind)
    if not isinstance(entries, dict) or len(entries) != 1:
        raise refuse(path, f"network_data_format.{kind}", "exactly one tensor is mapped (radstream sends one "
                                                             "image and reads one output)")
    (key, fmt), = entries.items()
    where = f"network_data_format.{kind}.{key}"
    if not isinstance(fmt, dict):
        raise refuse(path, where, "not an object")
    for required in ("type", "num_channels", "spatial_shape", "dtype"):
        if required not in fmt:
            raise refuse(path, f"{where}.{required}", "missing")
    if fmt["type"] != "image":
        raise refuse(path, f"{where}.type", f"{fmt['type']!r}: only image tensors are mapped")
    if fmt["dtype"] not in DTYPES:
        raise refuse(path, f"{where}.dtype", f"{fmt['dtype']!r} is not supported (float32 or float16)")
    channels = fmt["num_channels"]
    if not isinstance(channels, int) or channels < 1:
        raise refuse(path, f"{where}.num_channels", f"{channels!r} is not a positive integer")
    shape = fmt["spatial_shape"]
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int | str) for s in shape):
        raise refuse(path, f"{where}.spatial_shape", f"{shape!r}: three dimensions (a 3-D network) are mapped")
    raw_def = fmt.get("channel_def") or {}
    if not isinstance(raw_def, dict) or not all(str(k).isdigit() for k in raw_def):
        raise refuse(path, f"{where}.channel_def", "expected {\"0\": name, ...}")
    modality = fmt.get("modality")
    return TensorFormat(key, fmt["type"], channels, list(shape), fmt["dtype"],
                        {int(k): str(v) for k, v in raw_def.items()}, modality if isinstance(modality, str) else None,
                        where)


def fits(meta_dim: int | str, dim: int) -> bool:
    """Does a fixed model dimension satisfy a metadata entry (an integer, ``"*"`` or ``"16*n"``)?"""
    if isinstance(meta_dim, int):
        return meta_dim == dim
    m = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", meta_dim)
    return meta_dim.strip() in ("*", "n", "-1") or (m is not None and dim % int(m.group(1)) == 0)


# --- inference.json --------------------------------------------------------------------------------------

@dataclass
class Mapping:
    """What inference.json asks for, in radstream's terms."""

    spacing: tuple[float, float, float] | None = None
    axcodes: str | None = None
    normalise: list[dict[str, Any]] = field(default_factory=list)
    sliding: dict[str, Any] | None = None  # roi (x, y, z), overlap, batch, blend, sigma
    threshold: float | None = None  # one-channel outputs
    sigmoid: bool = False
    argmax: bool = False
    largest: list[int] | None = None


def _number(t: Transform, path: Path, name: str, default: Any = None) -> Any:
    v = t.args.get(name, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
        raise refuse(path, f"{t.key}::{name}", f"{v!r} is not a number")
    return v


def _affine(t: Transform, path: Path, p: dict[str, Any], lo: str, hi: str, clip: bool) -> None:
    b_min, b_max = _number(t, path, lo), _number(t, path, hi)
    if (b_min is None) != (b_max is None) or (clip and b_min is None):
        raise refuse(path, f"{t.key}::{lo}/{hi}", "both or neither are given (and both for clip)")
    if clip:
        p["clip"] = [0.0, 1.0]
    if b_min is not None and (b_min, b_max) != (0, 1):
        p["affine"] = [float(b_max - b_min), float(b_min)]


def intensity(t: Transform, path: Path) -> dict[str, Any]:
    """One intensity transform as ``normalise`` params."""
    if t.name == "ScaleIntensityRange":
        a_min, a_max = _number(t, path, "a_min"), _number(t, path, "a_max")
        if a_min is None or a_max is None or a_max <= a_min:
            raise refuse(path, f"{t.key}::a_min/a_max", f"need a_min < a_max, got {a_min!r}, {a_max!r}")
        p: dict[str, Any] = {"mode": "window", "window": [float(a_min), float(a_max)]}
        _affine(t, path, p, "b_min", "b_max", bool(t.args.get("clip", False)))
        return p
    if t.name == "ScaleIntensityRangePercentiles":
        if t.args.get("relative", False):
            raise refuse(path, f"{t.key}::relative", "relative=true is not mapped")
        lower, upper = _number(t, path, "lower"), _number(t, path, "upper")
        if lower is None or upper is None or not 0 <= lower < upper <= 100:
            raise refuse(path, f"{t.key}::lower/upper", f"need 0 <= lower < upper <= 100, got {lower!r}, {upper!r}")
        p = {"mode": "percentile", "percentiles": [float(lower), float(upper)]}
        _affine(t, path, p, "b_min", "b_max", bool(t.args.get("clip", False)))
        return p
    if t.name == "NormalizeIntensity":
        for unsupported in ("subtrahend", "divisor"):
            if t.args.get(unsupported) is not None:
                raise refuse(path, f"{t.key}::{unsupported}", "fixed statistics are not mapped")
        return {"mode": "zscore", "nonzero": bool(t.args.get("nonzero", False))}
    if t.name == "ScaleIntensity":
        if t.args.get("factor") is not None:
            raise refuse(path, f"{t.key}::factor", "factor is not mapped")
        minv, maxv = _number(t, path, "minv", 0.0), _number(t, path, "maxv", 1.0)
        if minv is None or maxv is None or maxv <= minv:
            raise refuse(path, f"{t.key}::minv/maxv", f"need minv < maxv, got {minv!r}, {maxv!r}")
        p = {"mode": "percentile", "percentiles": [0.0, 100.0]}
        if (minv, maxv) != (0, 1):
            p["affine"] = [float(maxv - minv), float(minv)]
        return p
    raise AssertionError(t.name)


INTENSITY = {"ScaleIntensityRange", "ScaleIntensityRangePercentiles", "NormalizeIntensity", "ScaleIntensity"}


def preprocessing(config: dict[str, Any], path: Path, m: Mapping) -> None:
    for t in transforms(config, path, "preprocessing"):
        if t.name in PASSIVE:
            if t.name == "CastToType" and str(t.args.get("dtype", "float32")).rsplit(".", 1)[-1] not in DTYPES:
                raise refuse(path, f"{t.key}::dtype", f"{t.args.get('dtype')!r}: float32 or float16 only")
            continue
        if t.name == "Spacing":
            pix = t.args.get("pixdim")
            if (not isinstance(pix, list) or len(pix) != 3
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in pix)):
                raise refuse(path, f"{t.key}::pixdim", f"{pix!r}: three positive spacings (x, y, z) mm are mapped")
            m.spacing = (float(pix[0]), float(pix[1]), float(pix[2]))
        elif t.name == "Orientation":
            codes = t.args.get("axcodes")
            if (not isinstance(codes, str) or len(codes) != 3
                    or any(c not in (a, OPPOSITE[a]) for c, a in zip(codes.upper(), LPS, strict=True))):
                raise refuse(path, f"{t.key}::axcodes", f"{codes!r}: axis codes in x, y, z order (L/R, P/A, S/I, "
                                                        "e.g. RAS or LPS) are mapped, no axis permutation")
            m.axcodes = codes.upper()
        elif t.name in INTENSITY:
            m.normalise.append(intensity(t, path))
        else:
            raise refuse(path, t.key, f"transform {t.name}d has no radstream operator (mapped: Spacingd, "
                                      "Orientationd, ScaleIntensityRanged, ScaleIntensityRangePercentilesd, "
                                      "NormalizeIntensityd, ScaleIntensityd and the loading/type transforms)")


def inferer(config: dict[str, Any], path: Path, m: Mapping) -> None:
    raw = resolve(config.get("inferer"), config, path, "inferer")
    if not isinstance(raw, dict):
        raise refuse(path, "inferer", "missing (SlidingWindowInferer or SimpleInferer)")
    name = target_name(raw.get("_target_"), path, "inferer").rsplit(".", 1)[-1]
    args = {k: resolve(v, config, path, f"inferer::{k}") for k, v in raw.items() if not k.startswith("_")}
    if name == "SimpleInferer":
        return
    if name != "SlidingWindowInferer":
        raise refuse(path, "inferer::_target_", f"{name}: only SlidingWindowInferer and SimpleInferer are mapped")
    roi = args.get("roi_size")
    if not isinstance(roi, list) or len(roi) != 3 or not all(isinstance(v, int) and v > 0 for v in roi):
        raise refuse(path, "inferer::roi_size", f"{roi!r}: three positive integers are mapped")
    overlap = args.get("overlap", 0.25)
    if not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise refuse(path, "inferer::overlap", f"{overlap!r}: one number in [0, 1) is mapped")
    batch = args.get("sw_batch_size", 1)
    if not isinstance(batch, int) or batch < 1:
        raise refuse(path, "inferer::sw_batch_size", f"{batch!r} is not a positive integer")
    mode = args.get("mode", "constant")
    if mode not in ("constant", "gaussian"):
        raise refuse(path, "inferer::mode", f"{mode!r}: constant or gaussian")
    sigma = args.get("sigma_scale", 0.125)
    if not isinstance(sigma, int | float) or sigma <= 0:
        raise refuse(path, "inferer::sigma_scale", f"{sigma!r}: one positive number is mapped")
    m.sliding = {"roi": [int(v) for v in roi], "overlap": float(overlap), "batch": batch, "blend": mode,
                 "sigma": float(sigma)}


def postprocessing(config: dict[str, Any], path: Path, m: Mapping) -> None:
    for t in transforms(config, path, "postprocessing"):
        if t.name in PASSIVE_POST:
            continue
        if t.name == "Activations":
            if t.args.get("other") is not None:
                raise refuse(path, f"{t.key}::other", "a custom activation is not mapped")
            m.sigmoid = m.sigmoid or bool(t.args.get("sigmoid", False))
        elif t.name == "AsDiscrete":
            m.argmax = m.argmax or bool(t.args.get("argmax", False))
            threshold = t.args.get("threshold")
            if threshold is None and t.args.get("threshold_values"):  # MONAI < 0.9
                threshold = t.args.get("logit_thresh", 0.5)
            if threshold is not None:
                if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                    raise refuse(path, f"{t.key}::threshold", f"{threshold!r} is not a number")
                m.threshold = float(threshold)
        elif t.name == "KeepLargestConnectedComponent":
            labels = t.args.get("applied_labels")
            if labels is not None and not (isinstance(labels, list) and all(isinstance(v, int) for v in labels)):
                raise refuse(path, f"{t.key}::applied_labels", f"{labels!r}: a list of label values")
            m.largest = labels if labels is not None else []
        else:
            raise refuse(path, t.key, f"transform {t.name}d has no radstream operator (mapped: Activationsd, "
                                      "AsDiscreted, KeepLargestConnectedComponentd, Invertd, SaveImaged)")


# --- the model -------------------------------------------------------------------------------------------

def load_model(root: Path, spatial: tuple[int, int, int] | None, name: str,
               dtype: str = "float32") -> tuple[onnx.ModelProto, Path]:
    """``models/model.onnx``; or deepbet's TorchScript ``models/model.ts`` rebuilt without torch (tensors of
    the metadata's ``dtype``); else refused."""
    folder = root / MODELS
    onnx_path = folder / "model.onnx"
    if onnx_path.is_file():
        try:
            return onnx.load(str(onnx_path)), onnx_path
        except Exception as exc:  # onnx raises DecodeError and others for a broken file
            raise refuse(onnx_path, "(file)", f"not an ONNX model: {exc}") from exc
    ts, pt = folder / "model.ts", folder / "model.pt"
    how = ("export it to ONNX where torch is installed (torch.onnx.export(net, torch.zeros(1, C, *spatial_shape), "
           "'models/model.onnx', input_names=[...], output_names=[...], dynamic_axes={...: {0: 'batch'}})) and "
           "import again")
    if ts.is_file():
        from radstream.models.deepbet import TorchScriptArchive, linknet3d_onnx

        try:
            archive = TorchScriptArchive(ts.read_bytes())
            transport: Literal["float16", "float32"] = "float16" if dtype == "float16" else "float32"
            return linknet3d_onnx(archive, name, spatial or (256, 256, 256), transport=transport), ts
        except Exception as exc:  # DeepbetError, or a zip/pickle the reader does not know: any other TorchScript
            raise refuse(ts, "(file)", f"TorchScript cannot be converted without torch (only deepbet's LinkNet3d "
                                       f"is read without it: {exc}); {how}") from exc
    if pt.is_file():
        raise refuse(pt, "(file)", f"a PyTorch state dict needs torch and the network's code to run; {how}")
    raise refuse(folder, "model.onnx", "missing (models/model.onnx, model.ts or model.pt)")


def dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """A tensor's dimensions, None where free."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


def graph_io(model: onnx.ModelProto, path: Path) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise refuse(path, "graph", f"{len(inputs)} inputs and {len(model.graph.output)} outputs: radstream feeds "
                                    "one input and reads one output")
    return inputs[0], model.graph.output[0]


@dataclass(frozen=True)
class Checked:
    """The model's tensors as checked against metadata.json."""

    input_name: str
    output_name: str
    input_type: int
    output_type: int
    batch: int | None  # fixed batch dimension (1) or None (free)
    spatial: list[int | None]  # (x, y, z)
    out_channels: int


def check_model(model: onnx.ModelProto, path: Path, meta_path: Path, inp: TensorFormat,
                out: TensorFormat) -> Checked:
    i, o = graph_io(model, path)
    shape_in, shape_out = dims(i), dims(o)
    if len(shape_in) != 5 or len(shape_out) != 5:
        raise refuse(path, f"input {i.name!r}", f"shapes {shape_in} -> {shape_out}: a 3-D network [B, C, x, y, z] "
                                                "is mapped")
    if inp.num_channels != 1:
        raise refuse(meta_path, f"{inp.where}.num_channels", f"{inp.num_channels}: radstream sends one channel")
    if shape_in[1] not in (None, inp.num_channels):
        raise refuse(meta_path, f"{inp.where}.num_channels", f"{inp.num_channels} disagrees with {path.name} input "
                                                             f"{i.name!r} shape {shape_in}")
    for k, (meta_dim, dim) in enumerate(zip(inp.spatial_shape, shape_in[2:], strict=True)):
        if dim is not None and not fits(meta_dim, dim):
            raise refuse(meta_path, f"{inp.where}.spatial_shape", f"{inp.spatial_shape} disagrees with {path.name} "
                                                                  f"input {i.name!r} shape {shape_in} (axis {k + 2})")
    if shape_out[1] not in (None, out.num_channels):
        raise refuse(meta_path, f"{out.where}.num_channels", f"{out.num_channels} disagrees with {path.name} output "
                                                             f"{o.name!r} shape {shape_out}")
    for fmt, value, where in ((inp, i, "input"), (out, o, "output")):
        elem = value.type.tensor_type.elem_type
        if elem != DTYPES[fmt.dtype][0]:
            raise refuse(meta_path, f"{fmt.where}.dtype", f"{fmt.dtype} disagrees with {path.name} {where} "
                                                          f"{value.name!r} ({TensorProto.DataType.Name(elem)})")
    if shape_in[0] not in (None, 1):
        raise refuse(path, f"input {i.name!r}", f"fixed batch {shape_in[0]}: batch 1 or a free batch is mapped")
    return Checked(i.name, o.name, i.type.tensor_type.elem_type, o.type.tensor_type.elem_type, shape_in[0],
                   shape_in[2:], out.num_channels)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def wrap(model: onnx.ModelProto, c: Checked, flips: list[int], whole_volume: bool,
         two_channels: float | None, path: Path = Path("model.onnx")) -> onnx.ModelProto:
    """The model behind radstream's array order: input ``[B, 1, z, y, x]`` (or ``[z, y, x]`` for a whole-volume
    model fed by ``triton_infer``), MONAI's ``[B, C, x, y, z]`` inside, output back in radstream's order;
    ``flips`` (axes 2..4 of MONAI's order) mirror the orientation; ``two_channels`` (a constant) makes a
    one-channel output ``[constant, output]`` so that an argmax is its threshold."""
    if _opset(model) < 13:
        raise refuse(path, "opset_import", f"opset {_opset(model)}: 13 or later is mapped")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inner_in, inner_out = f"{c.input_name}__monai", f"{c.output_name}__monai"
    for node in g.node:
        node.input[:] = [inner_in if n == c.input_name else n for n in node.input]
        node.output[:] = [inner_out if n == c.output_name else n for n in node.output]
        node.input[:] = [inner_out if n == c.output_name else n for n in node.input]
    for info in g.value_info:  # shapes recorded for the old names now belong to the inner tensors
        if info.name in (c.input_name, c.output_name):
            info.name = inner_in if info.name == c.input_name else inner_out
    if not any(c.output_name in node.output or inner_out in node.output for node in g.node):
        raise refuse(path, "graph", "the output is not produced by a node")

    def const(name: str, values: list[int] | list[float], dtype: Any = np.int64) -> str:
        g.initializer.append(numpy_helper.from_array(np.array(values, dtype=dtype), f"radstream_{name}"))
        return f"radstream_{name}"

    def flip(src: str, dst: str, tag: str) -> list[onnx.NodeProto]:
        if not flips:
            return [helper.make_node("Identity", [src], [dst], name=f"radstream_{tag}")]
        k = len(flips)
        return [helper.make_node("Slice", [src, const(f"{tag}_starts", [-1] * k), const(f"{tag}_ends", [-2**63] * k),
                                           const(f"{tag}_axes", flips), const(f"{tag}_steps", [-1] * k)], [dst],
                                 name=f"radstream_{tag}")]

    perm = [0, 1, 4, 3, 2]
    pre: list[onnx.NodeProto] = []
    src = c.input_name
    if whole_volume:
        pre.append(helper.make_node("Unsqueeze", [src, const("unsqueeze_axes", [0, 1])], ["radstream_in5"],
                                    name="radstream_unsqueeze"))
        src = "radstream_in5"
    pre.append(helper.make_node("Transpose", [src], ["radstream_in_xyz"], perm=perm, name="radstream_in_transpose"))
    pre += flip("radstream_in_xyz", inner_in, "in_flip")
    post: list[onnx.NodeProto] = []
    out = inner_out
    if two_channels is not None:
        np_type = helper.tensor_dtype_to_np_dtype(c.output_type)
        post += [helper.make_node("Mul", [out, const("zero", [0.0], np_type)], ["radstream_zeros"],
                                  name="radstream_mul"),
                 helper.make_node("Add", ["radstream_zeros", const("threshold_value", [two_channels], np_type)],
                                  ["radstream_threshold"], name="radstream_add"),
                 helper.make_node("Concat", ["radstream_threshold", out], ["radstream_two"], axis=1,
                                  name="radstream_concat")]
        out = "radstream_two"
    post += flip(out, "radstream_out_flipped", "out_flip")
    post.append(helper.make_node("Transpose", ["radstream_out_flipped"], [c.output_name], perm=perm,
                                 name="radstream_out_transpose"))
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)

    zyx = [-1 if d is None else d for d in reversed(c.spatial)]
    batch = 1 if whole_volume else -1 if c.batch is None else c.batch
    in_shape: list[int | str | None] = [d if d > 0 else None for d in zyx] if whole_volume else \
        [None if batch < 0 else batch, 1, *[d if d > 0 else None for d in zyx]]
    channels = 2 if two_channels is not None else c.out_channels
    out_shape: list[int | str | None] = [None if batch < 0 else batch, channels,
                                         *[d if d > 0 else None for d in zyx]]
    for seq, name, elem, shape in ((g.input, c.input_name, c.input_type, in_shape),
                                   (g.output, c.output_name, c.output_type, out_shape)):
        for k, v in enumerate(seq):
            if v.name == name:
                seq[k].CopyFrom(helper.make_tensor_value_info(name, elem, shape))
    onnx.checker.check_model(m)
    return m


def config_pbtxt(name: str, model: onnx.ModelProto, kind: str = "KIND_GPU") -> str:
    """Triton's model configuration for the wrapped model (onnxruntime, no Triton batching: the batch is a dim)."""
    i, o = graph_io(model, Path("model.onnx"))

    def tensor(v: onnx.ValueInfoProto) -> str:
        d = ", ".join(str(-1 if x is None else x) for x in dims(v))
        return (f'  {{\n    name: "{v.name}"\n    data_type: {ONNX_TO_TRITON[v.type.tensor_type.elem_type]}\n'
                f"    dims: [ {d} ]\n  }}\n")

    return (f"# imported from a MONAI bundle by radstream models import-bundle\n"
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            f"input [\n{tensor(i)}]\noutput [\n{tensor(o)}]\n"
            f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n")


# --- the pipeline file -----------------------------------------------------------------------------------

def label_names(out: TensorFormat, meta_path: Path, one_channel: bool) -> dict[int, str]:
    """Label value -> name from the output's channel_def (channel k is label k; a one-channel output is label 1)."""
    if not out.channel_def:
        raise refuse(meta_path, f"{out.where}.channel_def", "missing: the SEG needs the label names")
    if one_channel:
        names = [v for v in out.channel_def.values() if v.lower() != "background"]
        return {1: names[0] if names else out.channel_def[min(out.channel_def)]}
    if sorted(out.channel_def) != list(range(out.num_channels)):
        raise refuse(meta_path, f"{out.where}.channel_def", f"keys {sorted(out.channel_def)} are not the channels "
                                                            f"0..{out.num_channels - 1}")
    return {k: v for k, v in out.channel_def.items() if k > 0}


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return s or "bundle"


@dataclass(frozen=True)
class Imported:
    """Where the outputs went."""

    name: str
    model_dir: Path
    pipeline_file: Path
    operators: list[str]


@dataclass
class Plan:
    """Everything to write, computed before anything is written."""

    name: str
    model: onnx.ModelProto
    config: str
    pipeline: dict[str, Any]
    header: str


def pipeline_dict(name: str, meta: dict[str, Any], inp: TensorFormat, m: Mapping, c: Checked,
                  labels: dict[int, str]) -> dict[str, Any]:
    ops: list[dict[str, Any]] = [{"op": "load_series"}]
    if m.spacing is not None:
        ops.append({"op": "resample", "params": {"spacing": list(m.spacing)}})
    ops += [{"op": "normalise", "params": p} for p in m.normalise]
    if m.sliding is not None:
        s = m.sliding
        params: dict[str, Any] = {"patch_size": list(reversed(s["roi"])), "overlap": s["overlap"],
                                  "batch_size": s["batch"] if c.batch is None else 1, "blend": s["blend"]}
        if s["blend"] == "gaussian":
            params["sigma_scale"] = s["sigma"]
        ops.append({"op": "sliding_window_infer", "params": params})
    else:
        ops += [{"op": "triton_infer"}, {"op": "argmax"}]
    if m.largest is not None:
        ops.append({"op": "connected_components", "params": {"largest_only": m.largest or sorted(labels)}})
    ops += [{"op": "volumes", "params": {"labels": labels}}, {"op": "seg_writer", "params": {"labels": labels}},
            {"op": "sr_writer"}]
    spec: dict[str, Any] = {
        "name": name, "version": str(meta.get("version", "1")), "enabled": False,
        "description": str(meta.get("name") or meta.get("task") or meta.get("description") or name)[:200],
    }
    if inp.modality:
        spec["routing"] = {"modality": ["MR" if inp.modality.upper() in ("MRI", "MR") else inp.modality.upper()]}
    if m.axcodes is not None:
        spec["selection"] = {"orientation": ["axial"]}
    spec["model"] = {"name": name, "version": "1", "inputs": [c.input_name], "outputs": [c.output_name]}
    spec["operators"] = ops
    return spec


def plan(root: Path, name: str | None = None) -> Plan:
    """Read, map and check the bundle at ``root``; raise :class:`BundleError` on anything not mapped."""
    meta_path, inf_path = root / METADATA, root / INFERENCE
    meta = read_json(meta_path)
    config = read_json(inf_path)
    inp, out = tensor_format(meta, meta_path, "inputs"), tensor_format(meta, meta_path, "outputs")
    m = Mapping()
    preprocessing(config, inf_path, m)
    inferer(config, inf_path, m)
    postprocessing(config, inf_path, m)
    name = slug(name or str(meta.get("name") or root.name))
    fixed = [s for s in inp.spatial_shape if isinstance(s, int)]
    spatial = (fixed[0], fixed[1], fixed[2]) if len(fixed) == 3 else None
    model, model_path = load_model(root, spatial, name, inp.dtype)
    c = check_model(model, model_path, meta_path, inp, out)
    if m.sliding is not None:
        roi = m.sliding["roi"]
        for k, (r, d, meta_dim) in enumerate(zip(roi, c.spatial, inp.spatial_shape, strict=True)):
            if (d is not None and r != d) or (d is None and not fits(meta_dim, r)):
                raise refuse(inf_path, "inferer::roi_size", f"{roi} disagrees with {model_path.name} input "
                                                            f"{c.input_name!r} spatial {c.spatial} / metadata "
                                                            f"{inp.spatial_shape} (axis {k})")
    elif any(d is not None for d in c.spatial):
        raise refuse(inf_path, "inferer", f"SimpleInferer on a fixed input {c.spatial} needs every volume resized "
                                          "to it; use SlidingWindowInferer with roi_size = the input")
    one_channel = out.num_channels == 1
    two: float | None = None
    if one_channel:
        if m.threshold is None:
            raise refuse(inf_path, "postprocessing", "a one-channel output needs AsDiscreted threshold (the label "
                                                     "map is the thresholded output)")
        if m.sigmoid:
            if not 0 < m.threshold < 1:
                raise refuse(inf_path, "postprocessing::threshold", f"{m.threshold}: in (0, 1) after a sigmoid")
            two = math.log(m.threshold / (1 - m.threshold))
        else:
            two = m.threshold
    elif m.sigmoid:
        raise refuse(inf_path, "postprocessing", f"sigmoid on {out.num_channels} channels is a multi-label output; "
                                                 "radstream's label map takes one class per voxel (softmax/argmax)")
    flips = [2 + k for k, (code, lps) in enumerate(zip(m.axcodes or LPS, LPS, strict=True)) if code != lps]
    wrapped = wrap(model, c, flips, m.sliding is None, two, model_path)
    labels = label_names(out, meta_path, one_channel)
    spec = pipeline_dict(name, meta, inp, m, c, labels)
    header = (f"# Imported from the MONAI bundle {root.resolve().name} ({meta.get('name', name)} "
              f"{meta.get('version', '')}) by `radstream models import-bundle`.\n"
              f"# Serve the Triton model folder {name}/ and name this pipeline in RADSTREAM_PIPELINES to run it\n"
              f"# (opt-in: enabled: false). Review the routing and selection before enabling it.\n")
    return Plan(name, wrapped, config_pbtxt(name, wrapped), spec, header)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _move(src: Path, dst: Path, force: bool) -> None:
    if dst.exists():
        if not force:
            raise BundleError(f"{dst}: exists (use --force to replace it)")
        old = dst.with_name(f".{dst.name}.old")
        _remove(old)
        dst.rename(old)
        src.rename(dst)
        _remove(old)
    else:
        src.rename(dst)


def import_bundle(root: Path, out_repository: Path, pipelines_dir: Path, name: str | None = None,
                  force: bool = False) -> Imported:
    """Write ``<out_repository>/<name>/`` (``1/model.onnx``, ``config.pbtxt``) and ``<pipelines_dir>/<name>.yaml``.

    Both are built in temporary folders beside their destinations, the pipeline file is validated with
    radstream's own loader, and only then are they moved into place."""
    from radstream.pipelines.spec import load_pipeline_file

    if not root.is_dir():
        raise BundleError(f"{root}: not a folder (a MONAI bundle is a folder with configs/ and models/)")
    p = plan(root, name)
    model_dst, pipe_dst = out_repository / p.name, pipelines_dir / f"{p.name}.yaml"
    for dst in (model_dst, pipe_dst):
        if dst.exists() and not force:
            raise BundleError(f"{dst}: exists (use --force to replace it)")
    out_repository.mkdir(parents=True, exist_ok=True)
    pipelines_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_repository, prefix=f".{p.name}.") as tm, \
            tempfile.TemporaryDirectory(dir=pipelines_dir, prefix=f".{p.name}.") as tp:
        folder = Path(tm) / p.name
        (folder / "1").mkdir(parents=True)
        onnx.save(p.model, str(folder / "1" / "model.onnx"))
        (folder / "config.pbtxt").write_text(p.config, encoding="utf-8")
        pipe = Path(tp) / f"{p.name}.yaml"
        pipe.write_text(p.header + yaml.safe_dump(p.pipeline, sort_keys=False, default_flow_style=None, width=110),
                        encoding="utf-8")
        try:
            load_pipeline_file(pipe)
        except Exception as exc:  # pydantic's ValidationError or a ValueError: the mapping made a bad file
            raise BundleError(f"{pipe_dst}: the pipeline file made from the bundle is refused by radstream's "
                              f"loader: {exc}") from exc
        _move(folder, model_dst, force)
        _move(pipe, pipe_dst, force)
    return Imported(p.name, model_dst, pipe_dst, [o["op"] for o in p.pipeline["operators"]])
