"""Synthetic DICOM studies with known ground truth (``radstream synth``).

Brain MR FLAIR volumes with a lesion that changes over timepoints, abdominal CT with a liver
of known left/right lobe and vessel volumes, pelvis radiographs with left/right hips labelled
normal / fracture / hardware. Not patient images: phantoms for tests, the demo and load tests.
"""

from radstream.synth.generate import GROUND_TRUTH_FILE, SynthConfig, load_truth, synthesize

__all__ = ["GROUND_TRUTH_FILE", "SynthConfig", "load_truth", "synthesize"]
