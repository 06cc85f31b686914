"""``radstream rules test PIPELINE PATH``: which series of a study on disk a pipeline selects, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radstream.events.models import Trigger
from radstream.pipelines.rules import SeriesFacts, requirements_met, select
from radstream.pipelines.spec import resolve_pipeline
from radstream.settings import Settings


def _plain(value: Any) -> Any:
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSfloat

    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, DSfloat):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, bytes):
        return None
    return value if isinstance(value, int | float) else str(value)


def series_on_disk(path: Path, called_ae: str | None = None, calling_ae: str | None = None) -> list[SeriesFacts]:
    """Group the DICOM files under ``path`` into series (attributes of the first instance, count of all)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    found: dict[tuple[str, str], SeriesFacts] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if not series:
            continue
        key = (study, series)
        if key in found:
            found[key].instance_count += 1
            continue
        attrs: dict[str, Any] = {}
        for elem in ds:
            if elem.keyword and elem.VR != "SQ":
                v = _plain(elem.value)
                if v is not None:
                    attrs[elem.keyword] = v
        if called_ae:
            attrs["CalledAETitle"] = called_ae
        if calling_ae:
            attrs["CallingAETitle"] = calling_ae
        found[key] = SeriesFacts(study, series, 1, attrs)
    return sorted(found.values(), key=lambda f: (f.study_instance_uid, int(f.attrs.get("SeriesNumber") or 0),
                                                 f.series_instance_uid))


def explain(settings: Settings, pipeline: str, path: Path, called_ae: str | None = None,
            calling_ae: str | None = None) -> tuple[int, str]:
    """(exit code: 0 when some series is selected, 1 when none; the explanation)."""
    spec = resolve_pipeline(pipeline, settings.dispatcher.pipelines_dir)
    facts = series_on_disk(path, called_ae, calling_ae)
    lines = [f"pipeline {spec.name} v{spec.version} (model {spec.model.name}:{spec.model.version or 'latest'}), "
             f"trigger {', '.join(t.value for t in spec.trigger)}; {len(facts)} series under {path}"]
    total = 0
    for study in sorted({f.study_instance_uid for f in facts}):
        members = [f for f in facts if f.study_instance_uid == study]
        chosen, verdicts = select(spec, members)
        total += len(chosen)
        lines.append(f"study {study}: {len(chosen)} of {len(members)} series selected")
        for f in members:
            v = verdicts[f.series_instance_uid]
            desc = f.attrs.get("SeriesDescription", "")
            lines.append(f"  [{'SELECTED' if v.selected else 'skipped '}] series {f.attrs.get('SeriesNumber', '?')} "
                         f"{desc!r} {f.attrs.get('Modality', '?')} {f.orientation or ''} {f.instance_count} instances"
                         f" ({f.series_instance_uid})")
            lines += [f"      {r}" for r in v.reasons]
        if Trigger.RULE in spec.trigger:
            ok, reasons = requirements_met(spec, members)
            lines.append(f"  required series {'present: the RULE trigger fires' if ok else 'missing: no request'}")
            lines += [f"      {r}" for r in reasons]
    return (0 if total else 1), "\n".join(lines)
