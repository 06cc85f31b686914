"""Operator names (as written in pipeline files) -> classes."""

from __future__ import annotations

from radstream.consumers.operators.base import Operator
from radstream.consumers.operators.brain_extraction import BrainExtraction
from radstream.consumers.operators.dicom_out import Blinding, PacsExport, SegWriter, SrWriter
from radstream.consumers.operators.postprocess import ConnectedComponents, HipDetections, Volumes
from radstream.consumers.operators.preprocess import Normalise, Resample
from radstream.consumers.operators.series_loader import SeriesLoader
from radstream.consumers.operators.sliding_window import Argmax, SlidingWindowInference
from radstream.consumers.operators.triton_infer import TritonInference

OPERATORS: dict[str, type[Operator]] = {
    cls.op: cls
    for cls in (SeriesLoader, Resample, Normalise, TritonInference, ConnectedComponents, Volumes, HipDetections,
                Blinding, SegWriter, SrWriter, PacsExport, SlidingWindowInference, Argmax,
                BrainExtraction)
}
