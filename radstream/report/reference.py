"""A pipeline's agreement with reference segmentations (a validation set's ground truth).

A reference is a DICOM SEG of an exam's source series from a source of kind ``reference``
(``radstream study sources add NAME --kind reference --ae AE``), sent by C-STORE from that AE title
or uploaded by the study lead, and checked against the series like every segmentation. For each
current completed result of the pipeline with a SEG and each valid reference on one of its source
series, segments are paired by label and compared on the series' grid: Dice and the volumes
(both measured from the SEGs by one method). ``radstream report`` prints the summary per
reference source and label.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import dict_row

from radstream.db.segmentations import check_pending
from radstream.dicom_seg import dice
from radstream.web.blinded import labels_by_name, model_volumes
from radstream.web.viewer import ViewCache

_SQL = """
SELECT r.*, s.source AS reference_source, s.seg_uri AS reference_seg_uri, s.volumes_ml AS reference_volumes_ml
FROM results r
JOIN v_worklist w USING (result_id)
JOIN segmentations s ON s.study_instance_uid = r.study_instance_uid
                    AND s.series_instance_uid = ANY(r.series_instance_uids) AND s.status = 'valid'
JOIN seg_sources src ON src.name = s.source AND src.kind = 'reference'
WHERE r.pipeline = %s AND r.status = 'completed' AND r.seg_uri IS NOT NULL
  AND w.superseded_by_result_id IS NULL AND (%s OR NOT r.shadow)
ORDER BY r.finished_at, s.source
"""


@dataclass(frozen=True, slots=True)
class ReferencePair:
    result_id: str
    study_instance_uid: str
    reference: str
    label: str
    dice: float | None
    model_ml: float
    reference_ml: float


@dataclass(frozen=True, slots=True)
class ReferenceSummary:
    pipeline: str
    reference: str
    label: str
    exams: int
    mean_dice: float | None
    min_dice: float | None
    mean_model_ml: float
    mean_reference_ml: float

    @property
    def volume_diff_pct(self) -> float | None:
        if self.mean_reference_ml == 0:
            return None
        return 100.0 * (self.mean_model_ml - self.mean_reference_ml) / self.mean_reference_ml

    def as_row(self) -> dict[str, Any]:
        return {**asdict(self), "volume_diff_pct": self.volume_diff_pct}


def reference_pairs(web: ViewCache, conn: psycopg.Connection[Any], pipeline: str, *,
                    include_shadow: bool = False) -> list[ReferencePair]:
    """One row per result, reference and label present in either segmentation."""
    check_pending(conn, web.settings)  # a reference that came before its exam's images is checked now
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SQL, (pipeline, include_shadow))
        rows = list(cur.fetchall())
    out: list[ReferencePair] = []
    for res in rows:
        model = labels_by_name(web, conn, res, str(res["seg_uri"]))
        ref = labels_by_name(web, conn, res, str(res["reference_seg_uri"]))
        if model is None or ref is None:  # the source images are not at hand
            continue
        model_ml = model_volumes(web, conn, res)
        ref_ml = {str(k): float(v) for k, v in (res["reference_volumes_ml"] or {}).items()}
        for label in sorted(set(model[0]) | set(ref[0])):
            a, b = model[0].get(label), ref[0].get(label)
            empty = np.zeros(next(m for m in (a, b) if m is not None).shape, bool)
            out.append(ReferencePair(str(res["result_id"]), str(res["study_instance_uid"]),
                                     str(res["reference_source"]), label,
                                     dice(a if a is not None else empty, b if b is not None else empty),
                                     model_ml.get(label, 0.0), ref_ml.get(label, 0.0)))
    return out


def summarise(pipeline: str, pairs: list[ReferencePair]) -> list[ReferenceSummary]:
    groups: dict[tuple[str, str], list[ReferencePair]] = {}
    for p in pairs:
        groups.setdefault((p.reference, p.label), []).append(p)
    out = []
    for (reference, label), ps in sorted(groups.items()):
        dices = [p.dice for p in ps if p.dice is not None]
        out.append(ReferenceSummary(
            pipeline, reference, label, len({p.result_id for p in ps}),
            round(statistics.fmean(dices), 4) if dices else None, round(min(dices), 4) if dices else None,
            round(statistics.fmean(p.model_ml for p in ps), 3), round(statistics.fmean(p.reference_ml for p in ps), 3)))
    return out


def format_reference(summaries: list[ReferenceSummary]) -> str:
    """The lines `radstream report` prints under a pipeline's figures ('' when it has no reference)."""
    if not summaries:
        return ""
    lines = ["  agreement with reference segmentations (model vs reference, from the SEGs):"]
    for s in summaries:
        d = "-" if s.mean_dice is None else f"{s.mean_dice:.4f} (min {s.min_dice:.4f})"
        pct = "" if s.volume_diff_pct is None else f" ({s.volume_diff_pct:+.1f} %)"
        lines.append(f"    {s.reference} / {s.label}: {s.exams} exams, Dice {d}, volume {s.mean_model_ml:.1f} mL "
                     f"vs {s.mean_reference_ml:.1f} mL{pct}")
    return "\n".join(lines)


def write_reference_csv(summaries: list[ReferenceSummary], path: Path) -> None:
    """One row per pipeline, reference source and label, with a header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(summaries[0].as_row()) if summaries else ["pipeline"])
        w.writeheader()
        for s in summaries:
            w.writerow(s.as_row())
