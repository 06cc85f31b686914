"""Event factories for the sink, longitudinal and report tests (real events, real schemas)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

from radstream.events.models import (
    Detection,
    FindingFeedback,
    InferenceCompleted,
    InferenceFailed,
    InferenceRequested,
    InstanceRef,
    Measurement,
    QcDecided,
    QcDecision,
    ReviewSubmitted,
    SelectedSeries,
    Trigger,
)

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def uid(*parts: object) -> str:
    """A deterministic DICOM-like UID from the parts."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return f"2.25.{digest}"


def rid(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:32]


def requested(patient: str, study: str, *, pipeline: str = "brain-tumour", study_date: str | None = None,
              last_received_at: datetime = T0, instances: int = 3) -> InferenceRequested:
    series_uid = uid(study, "series", 1)
    refs = [
        InstanceRef(sop_instance_uid=uid(study, "sop", i), sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    store_uri=f"file:///store/{i}", sha256="0" * 64, byte_size=1000, instance_number=i,
                    received_at=last_received_at - timedelta(seconds=instances - i))
        for i in range(instances)
    ]
    return InferenceRequested(
        producer="test-dispatcher/0", patient_key=patient, request_id=rid("req", pipeline, study),
        study_instance_uid=study, accession_number=f"ACC-{study[-6:]}", pipeline=pipeline, pipeline_version="1",
        model_name=f"{pipeline}-ref", model_version="1", trigger=Trigger.STUDY_COMPLETE,
        source_event_id=str(uuid.uuid4()), last_received_at=last_received_at,
        series=[SelectedSeries(series_instance_uid=series_uid, revision=1, modality="MR",
                               series_description="T1 post <contrast>", instances=refs)],
        study_date=study_date,
    )


def completed(patient: str, study: str, *, pipeline: str = "brain-tumour", volume_ml: float = 10.0,
              study_date: str | None = None, last_received_at: datetime = T0, run_s: float = 2.0,
              shadow: bool = False, model_version: str = "1", extra_measurements: list[Measurement] | None = None,
              detections: list[Detection] | None = None, blinding_hash: str | None = None) -> InferenceCompleted:
    request_id = rid("req", pipeline, study)
    started = last_received_at + timedelta(seconds=1)
    return InferenceCompleted(
        producer="test-worker/0", patient_key=patient, request_id=request_id, study_instance_uid=study,
        accession_number=f"ACC-{study[-6:]}", pipeline=pipeline, pipeline_version="1",
        model_name=f"{pipeline}-ref", model_version=model_version, shadow=shadow,
        result_id=rid("result", request_id, pipeline, model_version, shadow),
        series_instance_uids=[uid(study, "series", 1)],
        measurements=[Measurement("volume", "tumour", volume_ml, "mL"), *(extra_measurements or [])],
        detections=detections or [], seg_uri=f"file:///store/seg/{study}.dcm", sr_uri=None,
        blinding_hash=blinding_hash, timings_ms={"load": 10.0, "infer": run_s * 1000 - 10.0},
        started_at=started, occurred_at=started + timedelta(seconds=run_s), last_received_at=last_received_at,
        study_date=study_date,
    )


def failed(patient: str, study: str, *, pipeline: str = "brain-tumour", last_received_at: datetime = T0,
           model_version: str = "1") -> InferenceFailed:
    request_id = rid("req", pipeline, study)
    return InferenceFailed(
        producer="test-worker/0", patient_key=patient, request_id=request_id, study_instance_uid=study,
        pipeline=pipeline, pipeline_version="1", model_name=f"{pipeline}-ref", model_version=model_version,
        result_id=rid("result", request_id, pipeline, model_version, False), stage="load",
        reason="no usable series", retriable=False, attempts=1, last_received_at=last_received_at,
    )


def review(result_id: str, study: str, *, reviewer: str = "reader1", agree: list[bool | None] | None = None,
           time_spent_s: float = 30.0, pipeline: str = "brain-tumour", review_id: str | None = None,
           comment: str | None = None) -> ReviewSubmitted:
    return ReviewSubmitted(
        producer="test-web/0", review_id=review_id or str(uuid.uuid4()), result_id=result_id,
        study_instance_uid=study, pipeline=pipeline, reviewer=reviewer,
        findings=[FindingFeedback(finding=f"f{i}", agree=a, reader_label=None, comment=None)
                  for i, a in enumerate(agree if agree is not None else [True])],
        comment=comment, time_spent_s=time_spent_s,
    )


def qc(result_id: str, study: str, decision: QcDecision = QcDecision.APPROVED, *,
       pipeline: str = "hip-fracture") -> QcDecided:
    return QcDecided(producer="test-web/0", decision_id=str(uuid.uuid4()), result_id=result_id,
                     study_instance_uid=study, pipeline=pipeline, reviewer="qc1", decision=decision)
