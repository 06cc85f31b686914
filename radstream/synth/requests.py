"""InferenceRequested events for synthetic studies, without the SCP and the aggregator.

Copies each study's files into a content store and builds the request the dispatcher would
send. Used by tests, the demo and the load tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pydicom

from radstream import __version__
from radstream.events.models import InferenceRequested, InstanceRef, SelectedSeries, Trigger, utcnow
from radstream.patient_key import patient_key
from radstream.store import ContentStore

PIPELINE_FOR_KIND = {"brain_mr": "brain-tumour", "liver_ct": "liver", "pelvis_dx": "hip-fracture"}


def request_for_study(study: dict[str, Any], root: Path, store: ContentStore, site_secret: bytes, *,
                      pipeline: str, model_name: str, model_version: str = "1",
                      request_id: str | None = None) -> InferenceRequested:
    """One request for one ground-truth study entry (see ``ground_truth.json``)."""
    now = utcnow()
    series = []
    for se in study["series"]:
        refs = []
        for rel in se["files"]:
            path = root / rel
            obj = store.add_bytes(path.read_bytes())
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ipp = getattr(ds, "ImagePositionPatient", None)
            refs.append(InstanceRef(
                sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID), store_uri=obj.uri,
                sha256=obj.sha256, byte_size=obj.byte_size, instance_number=int(ds.InstanceNumber),
                position_along_normal=float(ipp[2]) if ipp is not None else None, received_at=now))
        series.append(SelectedSeries(series_instance_uid=se["series_instance_uid"], revision=1,
                                     modality=se["modality"], series_description=se["series_description"],
                                     instances=refs))
    return InferenceRequested(
        producer=f"radstream-synth/{__version__}",
        patient_key=patient_key(site_secret, study["patient_id"], study["issuer"]),
        request_id=request_id or str(uuid.uuid4()), study_instance_uid=study["study_instance_uid"],
        accession_number=study["accession_number"], pipeline=pipeline, pipeline_version="1",
        model_name=model_name, model_version=model_version, trigger=Trigger.MANUAL,
        source_event_id=str(uuid.uuid4()), last_received_at=now, series=series,
        study_date=study.get("study_date"), modality=series[0].modality if series else None,
    )
