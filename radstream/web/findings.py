"""The findings a reader judges on one result, and turning the feedback form into a ReviewSubmitted event."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from radstream.events.models import FindingFeedback, ReviewSubmitted

HIP_LABELS = ("normal", "fracture", "hardware")
MAX_TEXT = 4000


@dataclass(frozen=True, slots=True)
class Finding:
    name: str  # what the event records, e.g. "volume/tumour" or "left hip"
    model_says: str
    choices: tuple[str, ...] = ()  # allowed reader labels (empty: free text)


def findings_for(result: dict[str, Any], measurements: list[dict[str, Any]], detections: list[dict[str, Any]],
                 progression: bool | None) -> list[Finding]:
    out: list[Finding] = []
    for d in detections:
        out.append(Finding(str(d["label"]), f"{d['finding']} ({float(d['score']):.2f})",
                           HIP_LABELS if result["pipeline"].startswith("hip") else ()))
    for m in measurements:
        out.append(Finding(f"{m['name']}/{m['label']}", f"{float(m['value']):.2f} {m['unit']}"))
    if progression is not None:
        out.append(Finding("progression", "progression" if progression else "no progression",
                           ("progression", "no progression")))
    return out


class FeedbackError(ValueError):
    pass


def _text(form: Any, key: str, limit: int = MAX_TEXT) -> str | None:
    v = form.get(key)
    if v is None or not isinstance(v, str):
        return None
    v = v.replace("\x00", "").strip()
    if len(v) > limit:
        raise FeedbackError(f"{key} is longer than {limit} characters")
    return v or None


def review_event(form: Any, result: dict[str, Any], findings: list[Finding], reviewer: str, opened_at: float | None,
                 corrected_seg_uri: str | None, corrected_volume_ml: float | None) -> ReviewSubmitted:
    """The event for one submitted form; finding names come from the server, never from the form."""
    items: list[FindingFeedback] = []
    for i, f in enumerate(findings):
        agree_raw = form.get(f"f{i}_agree")
        if agree_raw not in (None, "", "agree", "disagree"):
            raise FeedbackError("agree must be 'agree' or 'disagree'")
        label = _text(form, f"f{i}_label", 64)
        if label is not None and f.choices and label not in f.choices:
            raise FeedbackError(f"label for {f.name} must be one of {', '.join(f.choices)}")
        items.append(FindingFeedback(finding=f.name, agree=None if not agree_raw else agree_raw == "agree",
                                     reader_label=label, comment=_text(form, f"f{i}_comment", 1000)))
    spent = max(0.0, min(time.time() - opened_at, 24 * 3600.0)) if opened_at else 0.0
    return ReviewSubmitted(
        producer="radstream-web", review_id=str(uuid.uuid4()), result_id=str(result["result_id"]),
        study_instance_uid=str(result["study_instance_uid"]), pipeline=str(result["pipeline"]), reviewer=reviewer,
        findings=items, comment=_text(form, "comment"), time_spent_s=round(spent, 3),
        blinding_hash=result.get("blinding_hash"), corrected_seg_uri=corrected_seg_uri,
        corrected_volume_ml=corrected_volume_ml,
    )
