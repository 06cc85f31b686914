"""The blinded multi-reader study: a case's segmentations as readers see them, and the lead's report.

A *case* is the current completed result of a blinded pipeline for one exam. Its segmentations
are the model's (the result's SEG, named by the result's blinding hash) and every valid human
segmentation of the same source series (``segmentations``). Readers get each only as a letter
and its hash, in an order random per reader and case; everything that could tell the sources
apart (the model's name, which overlay URL is the model's, the model's measurement rows) is
left out of what they can fetch. The study lead's report unblinds: per source ratings, review
times and volumes, and pairwise agreement between segmentations (Dice and volume difference per
label).
"""

from __future__ import annotations

import functools
import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pydicom
from numpy.typing import NDArray
from psycopg.rows import dict_row

from radstream.db.segmentations import check_pending, reader_order
from radstream.dicom_seg import dice, seg_volume_ml, segment_names
from radstream.store import path_for_uri
from radstream.web.images import seg_labels
from radstream.web.viewer import ViewCache, load_view

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# a reference source's segmentations (a validation set's ground truth) are for `radstream report`, not readers
_NOT_REFERENCE = ("AND NOT EXISTS (SELECT 1 FROM seg_sources r WHERE r.name = segmentations.source "
                  "AND r.kind = 'reference')")
RATINGS = {1: "1 unusable", 2: "2 major edits needed", 3: "3 minor edits needed", 4: "4 usable after small edits",
           5: "5 usable as is"}


@dataclass(slots=True)
class CaseSegmentation:
    blinding_hash: str
    seg_uri: str
    volumes_ml: dict[str, float]
    letter: str = ""
    source: str = field(default="", repr=False)  # only for the study lead


@functools.lru_cache(maxsize=256)
def _seg_volumes(path: Path) -> dict[str, float]:
    """Per-label volumes of a stored SEG (content-addressed, so never stale)."""
    return {k: round(v, 3) for k, v in seg_volume_ml(path)[1].items()}


def model_volumes(web: ViewCache, conn: psycopg.Connection[Any], res: dict[str, Any]) -> dict[str, float]:
    """The model's volumes measured from its SEG, as every human segmentation's are (one method for all
    sources, so the numbers cannot tell them apart); the result's measurements if the SEG is unreadable."""
    try:
        return _seg_volumes(path_for_uri(str(res["seg_uri"]), web.settings.store_root))
    except (OSError, ValueError, AttributeError):
        rows = conn.execute("SELECT label, value FROM measurements WHERE result_id = %s AND name = 'volume' "
                            "AND unit = 'mL' ORDER BY label", (res["result_id"],)).fetchall()
        return {str(label): float(value) for label, value in rows}


def case_segmentations(web: ViewCache, conn: psycopg.Connection[Any], res: dict[str, Any], viewer: str,
                       *, with_sources: bool = False) -> list[CaseSegmentation]:
    """The case's segmentations in ``viewer``'s order (lettered A, B, ...); [] when the result is not blinded."""
    if not res.get("blinding_hash"):
        return []
    series = list(res.get("series_instance_uids") or [])
    check_pending(conn, web.settings, series)  # a SEG that came before its exam's images joins now
    items: dict[str, CaseSegmentation] = {}
    if res.get("seg_uri"):
        items[res["blinding_hash"]] = CaseSegmentation(res["blinding_hash"], res["seg_uri"],
                                                       model_volumes(web, conn, res))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT blinding_hash, seg_uri, volumes_ml, source FROM segmentations
                       WHERE status = 'valid' AND study_instance_uid = %s AND series_instance_uid = ANY(%s)
                         """ + _NOT_REFERENCE,
                    (res["study_instance_uid"], series))
        for row in cur.fetchall():
            items[row["blinding_hash"]] = CaseSegmentation(row["blinding_hash"], row["seg_uri"],
                                                           {k: float(v) for k, v in row["volumes_ml"].items()},
                                                           source=row["source"] if with_sources else "")
    if with_sources and res["blinding_hash"] in items:
        src = conn.execute("SELECT source FROM blinding_map WHERE blinding_hash = %s",
                           (res["blinding_hash"],)).fetchone()
        items[res["blinding_hash"]].source = str(src[0]) if src else f"model:{res['model_name']}/{res['model_version']}"
    order = reader_order(web.settings, viewer, res["result_id"], list(items))
    out = [items[h] for h in order]
    for i, item in enumerate(out):
        item.letter = LETTERS[i % len(LETTERS)] + (str(i // len(LETTERS)) if i >= len(LETTERS) else "")
    return out


def is_study_case(conn: psycopg.Connection[Any], res: dict[str, Any]) -> bool:
    """A blinded result with at least one human segmentation: the page is the multi-reader form."""
    if not res.get("blinding_hash"):
        return False
    row = conn.execute("""SELECT 1 FROM segmentations WHERE status IN ('valid', 'pending')
                          AND study_instance_uid = %s AND series_instance_uid = ANY(%s) """ + _NOT_REFERENCE
                       + " LIMIT 1",
                       (res["study_instance_uid"], list(res.get("series_instance_uids") or []))).fetchone()
    return row is not None


def own_ratings(conn: psycopg.Connection[Any], result_id: str, reviewer: str) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT blinding_hash, rating, comment, time_spent_s, submitted_at FROM reviews
                       WHERE result_id = %s AND reviewer = %s AND blinding_hash IS NOT NULL AND rating IS NOT NULL
                       ORDER BY submitted_at""", (result_id, reviewer))
        return {r["blinding_hash"]: r for r in cur.fetchall()}


def labels_by_name(web: ViewCache, conn: psycopg.Connection[Any], res: dict[str, Any], seg_uri: str
                   ) -> tuple[dict[str, NDArray[Any]], NDArray[Any]] | None:
    """One segmentation on the case's source grid: {segment label: mask}, and the label volume."""
    view = load_view(web, conn, res)
    if view is None:
        return None
    key = (res["result_id"], seg_uri)
    labels = web.labels.get(key)
    path = path_for_uri(seg_uri, web.settings.store_root)
    if labels is None:
        labels = seg_labels(path, view.volume)
        web.labels.put(key, labels)
    names = segment_names(pydicom.dcmread(path, stop_before_pixels=True))
    return {name: labels == number for number, name in names.items()}, labels


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def study_report(web: ViewCache, conn: psycopg.Connection[Any], pipeline: str) -> dict[str, Any]:
    """The unblinded report of a blinded pipeline: per source, and pairwise agreement per case and label."""
    check_pending(conn, web.settings)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT r.* FROM results r JOIN v_worklist w USING (result_id)
                       WHERE r.pipeline = %s AND r.blinding_hash IS NOT NULL AND w.superseded_by_result_id IS NULL
                       ORDER BY r.finished_at""", (pipeline,))
        cases = list(cur.fetchall())
        cur.execute("""SELECT source, rating, time_spent_s, reviewer, result_id FROM v_blinded_ratings
                       WHERE pipeline = %s""", (pipeline,))
        ratings = list(cur.fetchall())
    per_source: dict[str, dict[str, Any]] = {}
    pairs: list[dict[str, Any]] = []
    for res in cases:
        segs = case_segmentations(web, conn, res, "study-lead", with_sources=True)
        for s in segs:
            entry = per_source.setdefault(s.source, {"source": s.source, "segmentations": 0, "volumes": []})
            entry["segmentations"] += 1
            entry["volumes"].append(sum(s.volumes_ml.values()))
        masks = {}
        for s in segs:
            got = labels_by_name(web, conn, res, s.seg_uri)
            if got is not None:
                masks[s.blinding_hash] = got[0]
        for a, b in itertools.combinations(sorted(segs, key=lambda s: s.source), 2):
            if a.blinding_hash not in masks or b.blinding_hash not in masks:
                continue
            for label in sorted(set(masks[a.blinding_hash]) | set(masks[b.blinding_hash])):
                ma, mb = masks[a.blinding_hash].get(label), masks[b.blinding_hash].get(label)
                empty = np.zeros(next(m for m in (ma, mb) if m is not None).shape, bool)
                d = dice(ma if ma is not None else empty, mb if mb is not None else empty)
                # a label one segmentation lacks has 0 mL there
                va, vb = a.volumes_ml.get(label, 0.0), b.volumes_ml.get(label, 0.0)
                pairs.append({"result_id": res["result_id"], "accession": res.get("accession_number"),
                              "source_a": a.source, "source_b": b.source, "label": label,
                              "dice": round(d, 4) if d is not None else None,
                              "volume_a_ml": va, "volume_b_ml": vb,
                              "volume_diff_ml": round(va - vb, 3)})
    for r in ratings:
        entry = per_source.setdefault(r["source"], {"source": r["source"], "segmentations": 0, "volumes": []})
        if r["rating"] is not None:
            entry.setdefault("ratings", []).append(int(r["rating"]))
        entry.setdefault("times", []).append(float(r["time_spent_s"]))
    sources = []
    for name in sorted(per_source):
        e = per_source[name]
        sources.append({"source": name, "segmentations": e["segmentations"], "ratings": len(e.get("ratings", [])),
                        "mean_rating": _mean([float(v) for v in e.get("ratings", [])]),
                        "mean_review_time_s": _mean(e.get("times", [])),
                        "mean_total_volume_ml": _mean(e["volumes"])})
    summary: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for p in pairs:
        summary.setdefault((p["source_a"], p["source_b"], p["label"]), []).append(p)
    agreement = [{"source_a": a, "source_b": b, "label": label, "cases": len(ps),
                  "mean_dice": _mean([p["dice"] for p in ps if p["dice"] is not None]),
                  "mean_abs_volume_diff_ml": _mean([abs(p["volume_diff_ml"]) for p in ps
                                                    if p["volume_diff_ml"] is not None])}
                 for (a, b, label), ps in sorted(summary.items())]
    return {"pipeline": pipeline, "cases": len(cases), "sources": sources, "agreement": agreement, "pairs": pairs}


def format_study_report(data: dict[str, Any]) -> str:
    """The report as text tables (``radstream study report``, the demo)."""
    lines = [f"{data['pipeline']}: {data['cases']} exams"]
    lines.append(f"{'source':<28} {'segs':>5} {'ratings':>8} {'mean rating':>12} {'mean time s':>12} {'mean mL':>10}")
    for s in data["sources"]:
        lines.append(f"{s['source']:<28} {s['segmentations']:>5} {s['ratings']:>8} {_f(s['mean_rating']):>12} "
                     f"{_f(s['mean_review_time_s']):>12} {_f(s['mean_total_volume_ml']):>10}")
    lines.append(f"{'source A':<22} {'source B':<22} {'label':<18} {'exams':>5} {'Dice':>7} {'|dV| mL':>9}")
    for a in data["agreement"]:
        lines.append(f"{a['source_a']:<22} {a['source_b']:<22} {a['label']:<18} {a['cases']:>5} "
                     f"{_f(a['mean_dice'], 3):>7} {_f(a['mean_abs_volume_diff_ml']):>9}")
    return "\n".join(lines)


def _f(v: object, digits: int = 2) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"  # type: ignore[arg-type]
