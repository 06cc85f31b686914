"""Evaluate a pipeline's routing and series selection on the facts of a series, with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radstream.events.models import SeriesCompleted
from radstream.pipelines.facts import EVENT_FIELDS, plain
from radstream.pipelines.spec import Condition, PipelineSpec, SelectionRule

# routing/selection field -> DICOM keyword (or pseudo attribute) looked up in SeriesFacts.attrs
FIELD_KEYWORDS = {
    "called_ae_title": "CalledAETitle",
    "calling_ae_title": "CallingAETitle",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "station": "StationName",
    "series_description": "SeriesDescription",
    "manufacturer": "Manufacturer",
}


def orientation_label(iop: list[float] | None) -> str | None:
    """axial / coronal / sagittal by the dominant axis of the slice normal; oblique if none dominates."""
    if not iop or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    n = [abs(r[1] * c[2] - r[2] * c[1]), abs(r[2] * c[0] - r[0] * c[2]), abs(r[0] * c[1] - r[1] * c[0])]
    i = max(range(3), key=lambda k: n[k])
    if n[i] < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[i]


@dataclass
class SeriesFacts:
    """What the rules see of one series: the attributes its ``SeriesCompleted`` event carries
    (:mod:`radstream.pipelines.facts`), whether from the event or from files on disk."""

    study_instance_uid: str
    series_instance_uid: str
    instance_count: int
    attrs: dict[str, Any] = field(default_factory=dict)  # DICOM keyword -> value
    ae_pipelines: list[str] = field(default_factory=list)  # named by the called AE title ([]: rules decide)

    @property
    def orientation(self) -> str | None:
        iop = self.attrs.get("ImageOrientationPatient")
        return orientation_label([float(x) for x in iop]) if iop else None

    @classmethod
    def from_fields(cls, fields: dict[str, Any], attributes: dict[str, list[str]], instance_count: int,
                    ae_pipelines: list[str]) -> SeriesFacts:
        """From event fields (by field name) and the ``attributes`` map, as a SeriesCompleted holds them."""
        attrs: dict[str, Any] = {kw: plain(v) for kw, v in attributes.items() if v}
        attrs.update({kw: fields[name] for kw, name in EVENT_FIELDS.items() if fields.get(name) is not None})
        return cls(fields["study_instance_uid"], fields["series_instance_uid"], instance_count, attrs,
                   list(ae_pipelines))

    @classmethod
    def from_event(cls, ev: SeriesCompleted) -> SeriesFacts:
        fields = {name: getattr(ev, name) for name in EVENT_FIELDS.values()}
        return cls.from_fields(fields, ev.attributes, len(ev.instances), ev.ae_pipelines)


@dataclass
class Verdict:
    selected: bool
    reasons: list[str]


def _check(label: str, cond: Condition, value: Any, reasons: list[str]) -> bool:
    ok, why = cond.test(value)
    reasons.append(f"{'ok ' if ok else 'NO '} {label}: {why}")
    return ok


def routed(spec: PipelineSpec, facts: SeriesFacts) -> Verdict:
    reasons: list[str] = []
    if facts.ae_pipelines:  # sent to an AE title that names its pipelines: they, and only they, get it
        ok = spec.name in facts.ae_pipelines
        reasons.append(f"{'ok ' if ok else 'NO '} called AE title {facts.attrs.get('CalledAETitle', '?')!r} "
                       f"names {facts.ae_pipelines}: routing rules not applied")
        return Verdict(ok, reasons)
    ok = True
    for name, cond in spec.routing.conditions():
        keyword = FIELD_KEYWORDS.get(name, name)
        ok = _check(f"routing.{name}", cond, facts.attrs.get(keyword), reasons) and ok
    return Verdict(ok, reasons)


def matches_rule(rule: SelectionRule, facts: SeriesFacts, prefix: str = "selection") -> Verdict:
    reasons: list[str] = []
    ok = True
    desc = facts.attrs.get("SeriesDescription")
    if rule.series_description is not None:
        ok = _check(f"{prefix}.series_description", rule.series_description, desc, reasons) and ok
    if rule.exclude_description:
        excl = Condition(not_regex=rule.exclude_description)
        ok = _check(f"{prefix}.exclude_description", excl, desc or "-", reasons) and ok
    if rule.modality is not None:
        ok = _check(f"{prefix}.modality", rule.modality, facts.attrs.get("Modality"), reasons) and ok
    if rule.orientation:
        o = facts.orientation
        good = o in rule.orientation
        reasons.append(f"{'ok ' if good else 'NO '} {prefix}.orientation: {o or 'unknown'} "
                       f"{'in' if good else 'not in'} {rule.orientation}")
        ok = good and ok
    n = facts.instance_count
    good = n >= rule.min_instances and (rule.max_instances is None or n <= rule.max_instances)
    reasons.append(f"{'ok ' if good else 'NO '} {prefix}.instances: {n} "
                   f"(min {rule.min_instances}{'' if rule.max_instances is None else f', max {rule.max_instances}'})")
    ok = good and ok
    if rule.slice_thickness is not None:
        ok = _check(f"{prefix}.slice_thickness", rule.slice_thickness, facts.attrs.get("SliceThickness"),
                    reasons) and ok
    for kw, cond in rule.tags.items():
        if cond is not None:
            ok = _check(f"{prefix}.tags.{kw}", cond, facts.attrs.get(kw), reasons) and ok
    return Verdict(ok, reasons)


def evaluate(spec: PipelineSpec, facts: SeriesFacts) -> Verdict:
    """Routing and selection of one series (before ``pick``)."""
    r = routed(spec, facts)
    s = matches_rule(spec.selection, facts)
    return Verdict(r.selected and s.selected, r.reasons + s.reasons)


def select(spec: PipelineSpec, series: list[SeriesFacts]) -> tuple[list[SeriesFacts], dict[str, Verdict]]:
    """The series of one study the pipeline sends, applying ``pick``; and every series' verdict."""
    verdicts = {f.series_instance_uid: evaluate(spec, f) for f in series}
    chosen = [f for f in series if verdicts[f.series_instance_uid].selected]
    pick = spec.selection.pick
    if chosen and pick != "all":
        if pick == "latest":
            best = max(chosen, key=lambda f: (int(f.attrs.get("SeriesNumber") or 0), f.series_instance_uid))
        else:
            best = max(chosen, key=lambda f: (f.instance_count, f.series_instance_uid))
        for f in chosen:
            if f is not best:
                v = verdicts[f.series_instance_uid]
                v.selected = False
                v.reasons.append(f"NO  selection.pick: {pick} chose {best.series_instance_uid}")
        chosen = [best]
    return chosen, verdicts


def requirements_met(spec: PipelineSpec, series: list[SeriesFacts]) -> tuple[bool, list[str]]:
    """For trigger RULE: is every ``require`` rule matched by some routed series?"""
    reasons = []
    ok = True
    for i, rule in enumerate(spec.require):
        label = rule.name or f"require[{i}]"
        hits = [f.series_instance_uid for f in series
                if routed(spec, f).selected and matches_rule(rule, f, label).selected]
        reasons.append(f"{'ok ' if hits else 'NO '} {label}: {', '.join(hits) if hits else 'no series matches'}")
        ok = ok and bool(hits)
    return ok, reasons
