"""Post-processing operators on label maps.

connected_components labels each label's bounding box instead of the whole volume: the result must
be exactly what labelling the whole volume gives (the straightforward version, kept here as the
oracle). volumes counts each label; normalise works in place on one new float32 array."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from radstream.consumers.operators.base import Context
from radstream.consumers.operators.postprocess import ConnectedComponents
from scipy import ndimage

from radstream.events.models import InferenceRequested, Trigger, utcnow
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.settings import Settings
from radstream.store import ContentStore

pytestmark = pytest.mark.unit


def whole_volume(labels: np.ndarray, min_voxels: int, largest_only: list[int]) -> tuple[np.ndarray, dict[str, int]]:
    """Every label value over the whole volume (the operator's first version)."""
    labels = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    counts: dict[str, int] = {}
    for value in (int(v) for v in np.unique(labels) if v != 0):
        comp, _ = ndimage.label(labels == value, structure=structure)
        sizes = np.bincount(comp.ravel())[1:]
        keep = sizes >= min_voxels
        if value in largest_only and keep.any():
            keep = np.zeros_like(keep)
            keep[int(np.argmax(sizes))] = True
        labels[np.isin(comp, np.nonzero(~keep)[0] + 1)] = 0
        counts[str(value)] = int(keep.sum())
    return labels, counts


def blobs(rng: np.random.Generator, shape: tuple[int, ...], values: int) -> np.ndarray:
    """Speckle and blobs of several labels, touching each other, some at the volume's edges."""
    out = np.zeros(shape, dtype=np.uint8)
    for _ in range(12):
        centre = [int(rng.integers(0, s)) for s in shape]
        half = [int(rng.integers(0, 4)) for _ in shape]
        box = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(centre, half, strict=True))
        out[box] = rng.integers(1, values + 1)
    speckle = rng.random(shape) < 0.01
    out[speckle] = rng.integers(1, values + 1, size=int(speckle.sum()))
    return out


def run_operator(tmp_path: Path, labels: np.ndarray, params: dict[str, Any]) -> Context:
    settings = Settings(home=tmp_path)
    spec = load_inference_pipeline("brain-tumour")
    req = InferenceRequested(producer="t", patient_key="k", request_id="r", study_instance_uid="1.2",
                             pipeline="brain-tumour", pipeline_version="1", model_name="m", model_version="1",
                             trigger=Trigger.MANUAL, source_event_id="s", last_received_at=utcnow(), series=[])
    ctx = Context(settings, req, spec, ContentStore(tmp_path / "store"))
    ctx.labels = labels
    ConnectedComponents(settings, spec, params).run(ctx)
    return ctx


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("min_voxels", "largest_only"), [(1, []), (3, []), (10, [2]), (1, [1, 3])])
def test_bounding_boxes_give_what_the_whole_volume_gives(tmp_path: Path, seed: int, min_voxels: int,
                                                         largest_only: list[int]) -> None:
    rng = np.random.default_rng(seed)
    shape = (9, 23, 17) if seed % 2 else (31, 29)
    labels = blobs(rng, shape, values=4)
    before = labels.copy()
    ctx = run_operator(tmp_path, labels, {"min_voxels": min_voxels, "largest_only": largest_only})
    want, counts = whole_volume(before, min_voxels, largest_only)
    if min_voxels > 1 or largest_only:
        assert (want != before).any()  # the case removes something (speckle, smaller components)
    assert ctx.labels is not None
    np.testing.assert_array_equal(ctx.labels, want)
    assert ctx.notes["components"] == counts
    np.testing.assert_array_equal(labels, before)  # the model's label map is not changed in place


def test_an_empty_label_map_stays_empty(tmp_path: Path) -> None:
    ctx = run_operator(tmp_path, np.zeros((4, 5, 6), dtype=np.uint8), {"min_voxels": 3})
    assert ctx.labels is not None and not ctx.labels.any()
    assert ctx.notes["components"] == {}


def test_volumes_count_each_label_in_ml(tmp_path: Path) -> None:
    from radstream.consumers.operators.base import Volume
    from radstream.consumers.operators.postprocess import Volumes

    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, size=(7, 13, 11)).astype(np.uint8)
    ctx = run_operator(tmp_path, labels, {"min_voxels": 1})  # a context with the label map
    ctx.labels = labels
    ctx.volume = Volume(array=labels.astype(np.int16), spacing=(0.5, 0.5, 2.0), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), datasets=[])
    Volumes(ctx.settings, ctx.pipeline, {"labels": {1: "a", 3: "c", 5: "absent"}}).run(ctx)
    voxel_ml = 0.5 * 0.5 * 2.0 / 1000.0
    want = {"a": round(int((labels == 1).sum()) * voxel_ml, 4), "c": round(int((labels == 3).sum()) * voxel_ml, 4),
            "absent": 0.0}
    assert {m.label: m.value for m in ctx.measurements} == want
    assert all(m.name == "volume" and m.unit == "mL" for m in ctx.measurements)


def test_normalise_maps_the_window_to_0_1_in_float32_without_touching_the_input(tmp_path: Path) -> None:
    from radstream.consumers.operators.preprocess import Normalise

    x = np.arange(-100, 1300, 7, dtype=np.int16).reshape(4, 5, 10)
    ctx = run_operator(tmp_path, np.zeros((1, 1, 1), dtype=np.uint8), {})
    ctx.model_inputs = [x]
    Normalise(ctx.settings, ctx.pipeline, {"window": [0, 1200], "clip": [0, 1]}).run(ctx)
    [y] = ctx.model_inputs
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, np.clip((x.astype(np.float32) - np.float32(0)) / np.float32(1200), 0, 1))
    assert x[0, 0, 0] == -100  # the loaded volume is unchanged
