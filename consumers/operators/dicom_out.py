"""DICOM outputs: SEG (highdicom, referencing the source series), SR TID 1500 measurements,
blinding (salted hash), and PACS export (C-STORE SCU)."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from typing import Any

import highdicom as hd
import numpy as np
from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from radstream.consumers.operators.base import Context, Operator, OperatorError, Params, RetriableError
from radstream.consumers.operators.postprocess import source_labels

from radstream import __version__
from radstream.pipelines.operators_spec import InferencePipelineSpec
from radstream.secrets import blinding_salt
from radstream.settings import Settings

log = logging.getLogger(__name__)

Code = hd.sr.CodedConcept
ANATOMY = Code("123037004", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
# segment name -> (category, type); unknown names fall back to Tissue/Tissue
SEGMENT_CODES: dict[str, tuple[Code, Code]] = {
    "lesion": (Code("49755003", "SCT", "Morphologically Abnormal Structure"), Code("108369006", "SCT", "Neoplasm")),
    "liver right lobe": (ANATOMY, Code("72481006", "SCT", "Right lobe of liver")),
    "liver left lobe": (ANATOMY, Code("41801008", "SCT", "Left lobe of liver")),
    "hepatic vessels": (ANATOMY, Code("59820001", "SCT", "Blood vessel")),
    "brain": (ANATOMY, Code("12738006", "SCT", "Brain")),
}
ML = Code("mL", "UCUM", "milliliter")
HIP_JOINT = Code("24136001", "SCT", "Hip joint")
FINDING_CODES = {
    "normal": Code("17621005", "SCT", "Normal"),
    "fracture": Code("125605004", "SCT", "Fracture of bone"),
    "hardware": Code("HARDWARE", "99RADSTREAM", "Orthopedic hardware"),
}


def derived_uid(ctx: Context, what: str) -> str:
    return str(generate_uid(prefix=None, entropy_srcs=[ctx.request.request_id, ctx.pipeline.name, what]))


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def algorithm_name(ctx: Context) -> tuple[str, str]:
    if ctx.blinding_hash:
        return "blinded", ctx.blinding_hash
    m = ctx.pipeline.model
    suffix = " (reference model, not clinical)" if m.reference_model else ""
    return f"{m.name}{suffix}"[:64], (ctx.model_version or m.version or "latest")[:16]


class BlindingParams(Params):
    length: int = Field(16, ge=8, le=64)


class Blinding(Operator):
    """A salted hash (HMAC-SHA-256, site salt) of the pipeline and study: it names the result in the SEG
    series description and the event, so readers cannot tell which source (model or person) made it."""

    op = "blinding"
    Params = BlindingParams

    def __init__(self, settings: Settings, pipeline: InferencePipelineSpec, params: dict[str, Any]) -> None:
        super().__init__(settings, pipeline, params)
        # resolved when the worker starts: in production a placeholder salt stops it (radstream.secrets)
        self._salt = blinding_salt(settings)

    def run(self, ctx: Context) -> None:
        msg = f"{ctx.pipeline.name}|{ctx.request.study_instance_uid}|{ctx.request.request_id}".encode()
        ctx.blinding_hash = hmac.new(self._salt, msg, hashlib.sha256).hexdigest()[: self.params.length]


class SegParams(Params):
    labels: dict[int, str]
    series_number: int = 9901


class SegWriter(Operator):
    """DICOM SEG (binary, one segment per label) on the source frames, stored in the content store."""

    op = "seg_writer"
    Params = SegParams

    def run(self, ctx: Context) -> None:
        labels = source_labels(ctx)
        assert ctx.volume is not None
        present = [v for v in sorted(self.params.labels) if np.any(labels == v)]
        if not present:
            ctx.notes["seg"] = "nothing segmented"
            return
        name, version = algorithm_name(ctx)
        algo = hd.AlgorithmIdentificationSequence(name=name, version=version,
                                                  family=codes.cid7162.ArtificialIntelligence)
        descriptions = []
        label_map = np.zeros_like(labels)
        for number, value in enumerate(present, start=1):
            seg_name = self.params.labels[value]
            category, typ = SEGMENT_CODES.get(seg_name, (TISSUE, TISSUE))
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=seg_name[:64], segmented_property_category=category,
                segmented_property_type=typ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo, tracking_uid=derived_uid(ctx, f"track-{value}"),
                tracking_id=seg_name[:64]))
            label_map[labels == value] = number
        description = f"BLINDED SEG {ctx.blinding_hash}" if ctx.blinding_hash else f"AI SEG {ctx.pipeline.name}"
        seg = hd.seg.Segmentation(
            source_images=ctx.volume.datasets, pixel_array=label_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=derived_uid(ctx, "seg-series"), series_number=self.params.series_number,
            sop_instance_uid=derived_uid(ctx, "seg"), instance_number=1,
            manufacturer="radstream", manufacturer_model_name=("blinded" if ctx.blinding_hash else
                                                               f"radstream {ctx.pipeline.name}")[:64],
            software_versions=__version__, device_serial_number="0", series_description=description[:64],
        )
        ctx.seg_dataset = seg
        ctx.seg_uri = ctx.store.add_bytes(to_bytes(seg)).uri
        ctx.notes["seg_segments"] = {str(n): self.params.labels[v] for n, v in enumerate(present, start=1)}


class SrParams(Params):
    series_number: int = 9902
    procedure: tuple[str, str, str] = ("363679005", "SCT", "Imaging procedure")


class SrWriter(Operator):
    """Comprehensive 3D SR with a TID 1500 measurement report: volumes per segment, hip findings per box."""

    op = "sr_writer"
    Params = SrParams

    def run(self, ctx: Context) -> None:
        name, version = algorithm_name(ctx)
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid(ctx, "device"), name=name, model_name=version))
        groups: list[Any] = []
        evidence: list[Dataset] = []
        if ctx.seg_dataset is not None and ctx.volume is not None:
            seg = ctx.seg_dataset
            evidence = [*ctx.volume.datasets, seg]
            by_label = {m.label: m for m in ctx.measurements if m.name == "volume"}
            for number, label in sorted((int(k), v) for k, v in ctx.notes.get("seg_segments", {}).items()):
                m = by_label.get(label)
                if m is None:
                    continue
                _category, typ = SEGMENT_CODES.get(label, (TISSUE, TISSUE))
                groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(ctx, f"sr-track-{number}"),
                                                                 identifier=label[:64]),
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                        source_series=hd.sr.SourceSeriesForSegmentation(ctx.volume.datasets[0].SeriesInstanceUID)),
                    finding_type=typ,
                    measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=float(m.value), unit=ML)],
                ))
        elif ctx.images:
            evidence = [im.dataset for im in ctx.images]
            by_uid = {str(im.dataset.SOPInstanceUID): im.dataset for im in ctx.images}
            for i, det in enumerate(ctx.detections):
                src = by_uid.get(det.sop_instance_uid or "")
                if src is None:
                    continue
                x0, y0, x1, y1 = det.box
                region = hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float),
                    source_image=hd.sr.SourceImageForRegion(referenced_sop_class_uid=src.SOPClassUID,
                                                            referenced_sop_instance_uid=src.SOPInstanceUID))
                side = codes.SCT.Right if det.label.startswith("right") else codes.SCT.Left
                groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(ctx, f"det-{i}"),
                                                                 identifier=det.label[:64]),
                    referenced_region=region, finding_type=HIP_JOINT,
                    finding_sites=[hd.sr.FindingSite(anatomic_location=HIP_JOINT, laterality=side)],
                    qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                        name=codes.DCM.Finding, value=FINDING_CODES.get(det.finding, FINDING_CODES["normal"]))],
                ))
        if not groups:
            ctx.notes["sr"] = "nothing to report"
            return
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=Code(*self.params.procedure), imaging_measurements=groups)
        description = f"BLINDED SR {ctx.blinding_hash}" if ctx.blinding_hash else f"AI SR {ctx.pipeline.name}"
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=derived_uid(ctx, "sr-series"),
            series_number=self.params.series_number, sop_instance_uid=derived_uid(ctx, "sr"), instance_number=1,
            manufacturer="radstream", series_description=description[:64],
        )
        ctx.sr_uri = ctx.store.add_bytes(to_bytes(sr)).uri
        ctx.notes["sr_dataset"] = sr


class PacsParams(Params):
    enabled: bool = True
    timeout_s: float = 30.0


class PacsExport(Operator):
    """C-STORE SCU of the SEG and SR to ``settings.inference.pacs_*``; does nothing when no PACS is set."""

    op = "pacs_export"
    Params = PacsParams

    def run(self, ctx: Context) -> None:
        inf = self.settings.inference
        if not self.params.enabled or not inf.pacs_host:
            ctx.notes["pacs_export"] = "off"
            return
        from pynetdicom import AE
        from radstream.producers.requestor import associate

        datasets = [d for d in (ctx.seg_dataset, ctx.notes.get("sr_dataset")) if isinstance(d, Dataset)]
        if not datasets:
            ctx.notes["pacs_export"] = "nothing to send"
            return
        ae = AE(ae_title=inf.calling_ae_title)
        ae.maximum_pdu_size = 0
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.params.timeout_s
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = associate(ae, inf.pacs_host, inf.pacs_port, ae_title=inf.pacs_ae_title)
        if not assoc.is_established:
            raise RetriableError(f"PACS {inf.pacs_ae_title}@{inf.pacs_host}:{inf.pacs_port} refused the association")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", 0xFFFF))
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise OperatorError(f"PACS answered C-STORE status 0x{code:04X}")
        finally:
            assoc.release()
        ctx.notes["pacs_export"] = f"sent {len(datasets)}"
