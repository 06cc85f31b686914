"""``radstream models import-bundle``: a MONAI bundle (MONAI's bundle layout, assembled here: no hub is
reachable, and ``monai`` needs torch) as a Triton model folder and a pipeline file radstream loads.

A small ONNX graph (onnx.helper) exercises the mapping and the layout wrapper numerically; deepbet's real
segmentation network (from the cached wheel) is imported once as ONNX (run through onnxruntime) and once as
its TorchScript file (read without torch). Each refusal names the file and key and leaves nothing behind."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from radstream.consumers.operators.registry import OPERATORS

from radstream.models import deepbet
from radstream.models.bundle import BundleError, import_bundle
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.pipelines.spec import load_pipeline_file

pytestmark = pytest.mark.unit

XYZ = (16, 12, 8)  # MONAI's (x, y, z): distinct sizes so that a wrong transpose shows


def small_onnx(spatial: tuple[int | None, ...] = XYZ, channels: int = 2, batch: int | None = None,
               elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """[B, 1, x, y, z] -> [B, C, x, y, z]: channel c = image * (c + 1) * (a ramp along x) - c: not symmetric."""
    x = spatial[0] or 16
    ramp = np.arange(1, x + 1, dtype=np.float32).reshape(1, 1, x, 1, 1)
    if spatial[0] is None:
        ramp = np.ones((1, 1, 1, 1, 1), dtype=np.float32)
    np_type = helper.tensor_dtype_to_np_dtype(elem)
    nodes, outs, inits = [], [], [numpy_helper.from_array(ramp.astype(np_type), "ramp")]
    for c in range(channels):
        inits += [numpy_helper.from_array(np.array(c + 1, dtype=np_type), f"k{c}"),
                  numpy_helper.from_array(np.array(c, dtype=np_type), f"b{c}")]
        nodes += [helper.make_node("Mul", ["image", "ramp"], [f"r{c}"]),
                  helper.make_node("Mul", [f"r{c}", f"k{c}"], [f"m{c}"]),
                  helper.make_node("Sub", [f"m{c}", f"b{c}"], [f"o{c}"])]
        outs.append(f"o{c}")
    nodes.append(helper.make_node("Concat", outs, ["pred"], axis=1))
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("image", elem, [batch, 1, *spatial])],
                              [helper.make_tensor_value_info("pred", elem, [batch, channels, *spatial])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def metadata(spatial: tuple[Any, ...] = XYZ, channels: int = 2, dtype: str = "float32",
             channel_def: dict[str, str] | None = None, in_channels: int = 1) -> dict[str, Any]:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0", "name": "Toy organ segmentation", "task": "toy",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                                 "num_channels": in_channels, "spatial_shape": list(spatial), "dtype": dtype,
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": channels,
                                 "spatial_shape": list(spatial), "dtype": dtype, "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": channel_def or {"0": "background", "1": "spleen"}}},
        },
    }


def inference(pre: list[dict[str, Any]] | None = None, inferer: dict[str, Any] | None = None,
              post: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "image_key": "image",
        "preprocessing": {"_target_": "Compose", "transforms": pre if pre is not None else [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "@image_key"},
        ]},
        "roi": list(XYZ),
        "inferer": inferer or {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 4,
                               "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": post if post is not None else [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$'eval'"},
        ]},
    }


def write_bundle(root: Path, meta: dict[str, Any] | None, infer: dict[str, Any] | None,
                 model: onnx.ModelProto | None = None, files: dict[str, bytes] | None = None) -> Path:
    """MONAI's layout: configs/metadata.json, configs/inference.json, models/model.onnx (or other files)."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    if meta is not None:
        (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    if infer is not None:
        (root / "configs" / "inference.json").write_text(json.dumps(infer, indent=2))
    if model is not None:
        onnx.save(model, str(root / "models" / "model.onnx"))
    for name, data in (files or {}).items():
        (root / "models" / name).write_bytes(data)
    return root


def session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_params(spec_ops: list[dict[str, Any]] | Any) -> None:
    """Every operator exists and accepts its params (each refuses unknown ones)."""
    for o in spec_ops:
        OPERATORS[o.op].Params.model_validate(o.params)


def test_sliding_window_bundle(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "toy_bundle", metadata(), inference(), small_onnx())
    repo, pipes = tmp_path / "repo", tmp_path / "pipelines"
    done = import_bundle(bundle, repo, pipes)
    assert done.name == "toy-organ-segmentation"
    config = (repo / done.name / "config.pbtxt").read_text()
    assert 'name: "toy-organ-segmentation"' in config and 'backend: "onnxruntime"' in config
    assert 'name: "image"\n    data_type: TYPE_FP32\n    dims: [ -1, 1, 8, 12, 16 ]' in config
    assert 'name: "pred"\n    data_type: TYPE_FP32\n    dims: [ -1, 2, 8, 12, 16 ]' in config

    spec = load_pipeline_file(pipes / f"{done.name}.yaml")
    assert spec.enabled is False and spec.model.inputs == ["image"] and spec.model.outputs == ["pred"]
    assert spec.selection.orientation == ["axial"]
    assert spec.routing.modality is not None and spec.routing.modality.regex == ["CT"]
    ops = {o.op: o.params for o in spec.operators}
    assert [o.op for o in spec.operators] == ["load_series", "resample", "normalise", "sliding_window_infer",
                                              "connected_components", "volumes", "seg_writer", "sr_writer"]
    assert ops["resample"] == {"spacing": [1.5, 1.5, 2.0]}
    assert ops["normalise"] == {"mode": "window", "window": [-57.0, 164.0], "clip": [0.0, 1.0]}
    assert ops["sliding_window_infer"] == {"patch_size": [8, 12, 16], "overlap": 0.5, "batch_size": 4,
                                           "blend": "gaussian", "sigma_scale": 0.125}
    assert ops["connected_components"] == {"largest_only": [1]}
    assert ops["volumes"] == {"labels": {1: "spleen"}} and ops["seg_writer"] == {"labels": {1: "spleen"}}
    inference_spec = load_inference_pipeline(done.name, pipes)  # what a worker loads
    check_params(inference_spec.operators)

    # the wrapped model on radstream's [B, 1, z, y, x] = the bundle's model on MONAI's RAS [B, 1, x, y, z]
    rng = np.random.default_rng(0)
    x_zyx = rng.normal(size=(3, 1, *reversed(XYZ))).astype(np.float32)
    got = session(repo / done.name / "1" / "model.onnx").run(["pred"], {"image": x_zyx})[0]
    orig = session(bundle / "models" / "model.onnx")
    x_ras = np.flip(x_zyx.transpose(0, 1, 4, 3, 2), axis=(2, 3))  # LPS -> RAS: x and y mirrored
    want = np.flip(orig.run(["pred"], {"image": np.ascontiguousarray(x_ras)})[0], axis=(2, 3)).transpose(0, 1, 4, 3, 2)
    assert got.shape == (3, 2, *reversed(XYZ))
    np.testing.assert_array_equal(got, want)


def test_whole_volume_bundle(tmp_path: Path) -> None:
    pre = [{"_target_": "monai.transforms.LoadImaged", "keys": "image"},
           {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
           {"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 1.0}]
    model = small_onnx((None, None, None), channels=3)
    meta = metadata(("16*n", "16*n", "*"), channels=3, channel_def={"0": "background", "1": "liver", "2": "tumour"})
    bundle = write_bundle(tmp_path / "b", meta, inference(pre, {"_target_": "SimpleInferer"}, []), model)
    import_bundle(bundle, tmp_path / "repo", tmp_path / "pipes", name="liver-toy")
    config = (tmp_path / "repo" / "liver-toy" / "config.pbtxt").read_text()
    assert "dims: [ -1, -1, -1 ]" in config and "dims: [ 1, 3, -1, -1, -1 ]" in config
    spec = load_pipeline_file(tmp_path / "pipes" / "liver-toy.yaml")
    assert [o.op for o in spec.operators] == ["load_series", "normalise", "normalise", "triton_infer", "argmax",
                                              "volumes", "seg_writer", "sr_writer"]
    assert spec.operators[1].params == {"mode": "zscore", "nonzero": True}
    assert spec.operators[2].params == {"mode": "percentile", "percentiles": [0.0, 100.0], "affine": [2.0, -1.0]}
    assert spec.operators[5].params == {"labels": {1: "liver", 2: "tumour"}}
    assert spec.selection.orientation == []  # no Orientationd: no flip, any orientation
    check_params(spec.operators)
    x = np.random.default_rng(1).normal(size=(5, 7, 9)).astype(np.float32)
    got = session(tmp_path / "repo" / "liver-toy" / "1" / "model.onnx").run(["pred"], {"image": x})[0]
    want = session(bundle / "models" / "model.onnx").run(["pred"], {"image": x.T[None, None].copy()})[0]
    np.testing.assert_array_equal(got, want.transpose(0, 1, 4, 3, 2))


def deepbet_archive_bytes() -> bytes:
    wheel = deepbet.fetch_wheel()  # from PyPI once into the cache (sha256-checked), as `triton build --deepbet`
    with zipfile.ZipFile(wheel) as z:
        return z.read(deepbet.NETWORKS[deepbet.BRAIN_MODEL])


def deepbet_bundle(root: Path, dtype: str = "float32", size: int = 256, **files: Any) -> Path:
    """deepbet's segmentation network in MONAI's layout: one-channel brain probability, threshold 0.5."""
    shape = [size] * 3
    meta = metadata(tuple(shape), channels=1, channel_def={"0": "brain"}, dtype=dtype)
    meta["name"], meta["version"] = "deepbet brain", "1.0.2"
    meta["network_data_format"]["inputs"]["image"]["modality"] = "MRI"
    pre = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
           {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
           {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 1.0]},
           {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
            "b_min": 0.0, "b_max": 1.0, "clip": True}]
    infer = inference(pre, {"_target_": "SlidingWindowInferer", "roi_size": shape, "sw_batch_size": 2},
                      [{"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}])
    return write_bundle(root, meta, infer, **files)


def test_deepbet_network_bundle(tmp_path: Path) -> None:
    """deepbet's real network as models/model.onnx (radstream.models.deepbet's rebuild), through onnxruntime.
    Its weights on a 64³ input (the LinkNet is fully convolutional): two 256³ runs would take ~30 s here."""
    n = 64
    net = deepbet.linknet3d_onnx(deepbet.TorchScriptArchive(deepbet_archive_bytes()), "deepbet", (n, n, n))
    wire = "float16" if net.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16 else "float32"
    bundle = deepbet_bundle(tmp_path / "deepbet_bundle", wire, n, model=net)
    done = import_bundle(bundle, tmp_path / "repo", tmp_path / "pipes")
    assert done.name == "deepbet-brain"
    config = (tmp_path / "repo" / done.name / "config.pbtxt").read_text()
    triton_type = {"float16": "TYPE_FP16", "float32": "TYPE_FP32"}[wire]
    assert f'name: "image"\n    data_type: {triton_type}\n    dims: [ 1, 1, 64, 64, 64 ]' in config
    assert f'name: "brain_probability"\n    data_type: {triton_type}\n    dims: [ 1, 2, 64, 64, 64 ]' in config
    spec = load_pipeline_file(tmp_path / "pipes" / f"{done.name}.yaml")
    ops = {o.op: o.params for o in spec.operators}
    assert spec.routing.modality is not None and spec.routing.modality.regex == ["MR"]
    assert ops["normalise"] == {"mode": "percentile", "percentiles": [0.5, 99.5], "clip": [0.0, 1.0]}
    assert ops["sliding_window_infer"]["batch_size"] == 1  # the network's batch is fixed at 1
    assert ops["sliding_window_infer"]["patch_size"] == [n, n, n]
    assert ops["seg_writer"] == {"labels": {1: "brain"}}
    check_params(spec.operators)
    # the argmax over [0.5, p] is deepbet's threshold p > 0.5, in radstream's axis order
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) - n / 2,) * 3, indexing="ij")
    head = ((x / 18) ** 2 + (y / 22) ** 2 + (z / 16) ** 2 < 1).astype(np.float32)  # an off-centre ellipsoid
    head = np.roll(head, (3, -5, 7), axis=(0, 1, 2))
    vol = np.ascontiguousarray(head[None, None]).astype(wire)
    got = session(tmp_path / "repo" / done.name / "1" / "model.onnx").run(None, {"image": vol})[0]
    assert got.shape == (1, 2, n, n, n) and np.all(got[:, 0] == 0.5)
    p = session(bundle / "models" / "model.onnx").run(
        None, {"image": np.ascontiguousarray(np.flip(vol.transpose(0, 1, 4, 3, 2), axis=(2, 3)))})[0]
    want = np.flip(p, axis=(2, 3)).transpose(0, 1, 4, 3, 2)[:, 0] > 0.5
    assert 0 < int(want.sum()) < want.size  # the network finds something, not everything
    np.testing.assert_array_equal(np.argmax(got, axis=1).astype(bool), want)


def test_deepbet_torchscript_without_torch(tmp_path: Path) -> None:
    """models/model.ts that is deepbet's LinkNet3d is rebuilt by radstream.models.deepbet's reader."""
    bundle = deepbet_bundle(tmp_path / "b", "float32", files={"model.ts": deepbet_archive_bytes()})
    done = import_bundle(bundle, tmp_path / "repo", tmp_path / "pipes", name="bet")
    config = (tmp_path / "repo" / "bet" / "config.pbtxt").read_text()
    assert "data_type: TYPE_FP32\n    dims: [ 1, 2, 256, 256, 256 ]" in config
    assert done.operators[-4:] == ["sliding_window_infer", "volumes", "seg_writer", "sr_writer"]


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return d


BAD = {
    "missing metadata": (lambda: (None, inference(), small_onnx(), None),
                         r"configs/metadata\.json: \(file\): missing"),
    "missing inference": (lambda: (metadata(), None, small_onnx(), None),
                          r"configs/inference\.json: \(file\): missing"),
    "missing model": (lambda: (metadata(), inference(), None, None), r"models: model\.onnx: missing"),
    "spatial shape": (lambda: (metadata((96, 96, 96)), inference(), small_onnx(), None),
                      r"metadata\.json: network_data_format\.inputs\.image\.spatial_shape: \[96, 96, 96\] disagrees "
                      r"with model\.onnx input 'image'"),
    "output channels": (lambda: (metadata(channels=3, channel_def={"0": "a", "1": "b", "2": "c"}), inference(),
                                 small_onnx(), None),
                        r"metadata\.json: network_data_format\.outputs\.pred\.num_channels: 3 disagrees"),
    "input channels": (lambda: (metadata(in_channels=4), inference(), small_onnx(), None),
                       r"inputs\.image\.num_channels: 4: radstream sends one channel"),
    "dtype": (lambda: (metadata(dtype="int8"), inference(), small_onnx(), None),
              r"inputs\.image\.dtype: 'int8' is not supported"),
    "dtype mismatch": (lambda: (metadata(dtype="float16"), inference(), small_onnx(), None),
                       r"inputs\.image\.dtype: float16 disagrees with model\.onnx input 'image' \(FLOAT\)"),
    "unknown transform": (lambda: (metadata(), inference([{"_target_": "LoadImaged", "keys": "image"},
                                                          {"_target_": "CropForegroundd", "keys": "image"}]),
                                   small_onnx(), None),
                          r"inference\.json: preprocessing::transforms#1 \(CropForegroundd\): transform "
                          r"CropForegroundd has no radstream operator"),
    "roi vs model": (lambda: (metadata(), _set(inference(), "roi", [32, 32, 32]), small_onnx(), None),
                     r"inference\.json: inferer::roi_size: \[32, 32, 32\] disagrees"),
    "expression": (lambda: (metadata(), _set(inference(), "roi", "$[s * 2 for s in @x]"), small_onnx(), None),
                   r"inferer::roi_size: expression .* is not a plain literal"),
    "no inferer": (lambda: (metadata(), {k: v for k, v in inference().items() if k != "inferer"}, small_onnx(),
                            None), r"inference\.json: inferer: missing"),
    "no labels": (lambda: (_set(metadata(), "network_data_format.outputs.pred.channel_def", {}), inference(),
                           small_onnx(), None), r"outputs\.pred\.channel_def: missing"),
    "state dict": (lambda: (metadata(), inference(), None, {"model.pt": b"PK\x03\x04 not really"}),
                   r"models/model\.pt: \(file\): a PyTorch state dict needs torch .*torch\.onnx\.export"),
    "torchscript": (lambda: (metadata(), inference(), None, {"model.ts": b"PK\x03\x04 not a LinkNet3d"}),
                    r"models/model\.ts: \(file\): TorchScript cannot be converted without torch .*"
                    r"torch\.onnx\.export"),
    "one channel, no threshold": (lambda: (metadata(channels=1, channel_def={"0": "x"}), inference(post=[]),
                                           small_onnx(channels=1), None),
                                  r"inference\.json: postprocessing: a one-channel output needs AsDiscreted"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refusals(tmp_path: Path, case: str) -> None:
    make, message = BAD[case]
    meta, infer, model, files = make()
    bundle = write_bundle(tmp_path / "bundle", meta, infer, model, files)
    repo, pipes = tmp_path / "repo", tmp_path / "pipes"
    with pytest.raises(BundleError, match=message):
        import_bundle(bundle, repo, pipes)
    assert not repo.exists() and not pipes.exists()  # nothing written, not even half


def test_existing_outputs_and_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from radstream.cli.main import app

    bundle = write_bundle(tmp_path / "toy", metadata(), inference(), small_onnx())
    args = ["models", "import-bundle", str(bundle), "--out-repository", str(tmp_path / "repo"),
            "--pipelines-dir", str(tmp_path / "pipes"), "--name", "toy"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "sliding_window_infer" in res.output and (tmp_path / "pipes" / "toy.yaml").exists()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists (use --force" in again.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["toy"]  # no temporary folders left
    assert sorted(p.name for p in (tmp_path / "pipes").iterdir()) == ["toy.yaml"]
    (bundle / "configs" / "metadata.json").unlink()
    bad = CliRunner().invoke(app, [*args, "--force"])
    assert bad.exit_code == 2 and "metadata.json: (file): missing" in bad.output
