"""``radstream rules test PIPELINE PATH``: which series of a study on disk a pipeline selects, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radstream.events.header_fields import header_fields
from radstream.events.models import Trigger
from radstream.pipelines.facts import attributes_of
from radstream.pipelines.rules import SeriesFacts, requirements_met, select
from radstream.pipelines.spec import called_ae_routes, collected_keywords, deployment_pipelines, resolve_pipeline
from radstream.settings import Settings


def series_on_disk(path: Path, keywords: frozenset[str], called_ae: str | None = None,
                   calling_ae: str | None = None, ae_pipelines: list[str] | None = None) -> list[SeriesFacts]:
    """Group the DICOM files under ``path`` into series, each with the facts its SeriesCompleted event
    would carry (the first instance's attributes, read as the SCP reads them; the count of all)."""
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
        fields: dict[str, Any] = {**header_fields(ds), "study_instance_uid": study, "series_instance_uid": series,
                                  "called_ae_title": called_ae, "calling_ae_title": calling_ae}
        found[key] = SeriesFacts.from_fields(fields, attributes_of(ds, keywords), 1, ae_pipelines or [])
    return sorted(found.values(), key=lambda f: (f.study_instance_uid, int(f.attrs.get("SeriesNumber") or 0),
                                                 f.series_instance_uid))


def explain(settings: Settings, pipeline: str, path: Path, called_ae: str | None = None,
            calling_ae: str | None = None) -> tuple[int, str]:
    """(exit code: 0 when some series is selected, 1 when none; the explanation)."""
    spec = resolve_pipeline(pipeline, settings.pipelines_dir)
    specs = deployment_pipelines(settings)
    if spec.name not in {s.name for s in specs}:
        specs.append(spec)
    routes = called_ae_routes(settings, specs)
    if called_ae is not None and called_ae not in routes:
        return 2, f"called AE title {called_ae!r} is not served (served: {', '.join(sorted(routes))})"
    facts = series_on_disk(path, collected_keywords(settings, specs), called_ae, calling_ae,
                           routes.get(called_ae, []) if called_ae else [])
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
