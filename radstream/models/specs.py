"""What each reference model is: name, tensors, and the intensity bands it thresholds.

The bands are on the *normalised* intensity scale (0..1) that the pipeline's ``normalise``
operator produces from the window in the pipeline file. ``radstream.synth`` draws its
phantoms from the same constants, which is what makes these reference models exact on
synthetic data (and useless on real data: they are reference models, not clinical ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field

REFERENCE_NOTE = (
    "REFERENCE MODEL (not for clinical use): intensity-band thresholds that are exact only on "
    "radstream synth phantoms"
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, uint8
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # ascending thresholds on the normalised scale; label = number of thresholds exceeded
    thresholds: tuple[float, ...] = ()
    # values at or above this are set to label 0 (e.g. bone in the liver model)
    upper_cut: float | None = None
    labels: dict[int, str] = field(default_factory=dict)
    version: str = "1"


# --- brain MR (FLAIR-like): window [0, 1200] -> [0, 1]
BRAIN_WINDOW = (0.0, 1200.0)
BRAIN_INTENSITY = {"background": 0.0, "csf": 150.0, "scalp": 250.0, "brain": 400.0, "lesion": 900.0}
BRAIN_NOISE = 15.0

# --- abdominal CT (HU): window [-200, 400] -> [0, 1]
LIVER_WINDOW = (-200.0, 400.0)
LIVER_HU = {
    "air": -1000.0, "fat": -100.0, "soft_tissue": 20.0, "right_lobe": 60.0, "left_lobe": 100.0,
    "vessels": 180.0, "bone": 700.0,
}
LIVER_NOISE_HU = 5.0

# --- pelvis radiograph: stored values 0..4095, window [0, 4095] -> [0, 1]
HIP_WINDOW = (0.0, 4095.0)
HIP_LEVEL = {"soft_tissue": 0.20, "fracture_line": 0.35, "pelvis": 0.50, "femur": 0.65, "metal": 0.95}
HIP_NOISE = 0.02


def _norm(value: float, window: tuple[float, float]) -> float:
    lo, hi = window
    return (value - lo) / (hi - lo)


def _mid(a: float, b: float) -> float:
    return (a + b) / 2.0


BRAIN = ModelSpec(
    name="brain_lesion_ref",
    description="Reference model: FLAIR-hyperintense lesion = normalised intensity above a threshold.",
    inputs=(TensorSpec("image", "float32", (-1, -1, -1)),),
    outputs=(TensorSpec("labels", "uint8", (-1, -1, -1)),),
    thresholds=(_norm(_mid(BRAIN_INTENSITY["brain"], BRAIN_INTENSITY["lesion"]), BRAIN_WINDOW),),
    labels={1: "lesion"},
)

LIVER = ModelSpec(
    name="liver_lobes_ref",
    description="Reference model: right lobe, left lobe and vessels as contrast-enhancement bands.",
    inputs=(TensorSpec("image", "float32", (-1, -1, -1)),),
    outputs=(TensorSpec("labels", "uint8", (-1, -1, -1)),),
    thresholds=tuple(
        _norm(_mid(LIVER_HU[a], LIVER_HU[b]), LIVER_WINDOW)
        for a, b in (("soft_tissue", "right_lobe"), ("right_lobe", "left_lobe"), ("left_lobe", "vessels"))
    ),
    upper_cut=_norm(_mid(LIVER_HU["vessels"], LIVER_HU["bone"]), LIVER_WINDOW),
    labels={1: "liver right lobe", 2: "liver left lobe", 3: "hepatic vessels"},
)

HIP = ModelSpec(
    name="hip_bands_ref",
    description="Reference model: per-pixel class map (fracture line, pelvis, femur, metal) from intensity bands.",
    inputs=(TensorSpec("image", "float32", (-1, -1)),),
    outputs=(TensorSpec("labels", "uint8", (-1, -1)),),
    thresholds=tuple(
        _mid(HIP_LEVEL[a], HIP_LEVEL[b])
        for a, b in (("soft_tissue", "fracture_line"), ("fracture_line", "pelvis"), ("pelvis", "femur"),
                     ("femur", "metal"))
    ),
    labels={1: "fracture line", 2: "pelvis", 3: "femur", 4: "metal"},
)

REFERENCE_MODELS: tuple[ModelSpec, ...] = (BRAIN, LIVER, HIP)

# A model that mostly waits (as on a busy GPU): served by pytriton only, for the R6 benchmark.
WAIT_MODEL = "wait_ref"
