"""Pipeline files: routing, series selection and trigger (the dispatcher's part).

A pipeline file is ``pipelines/<name>.yaml``. The dispatcher reads the keys below; the
inference worker reads ``model`` and ``operators`` (:mod:`radstream.pipelines.operators_spec`);
any other key is kept (``extra="allow"``) so the format can grow::

    name: brain-tumour
    version: "1"
    routing:                        # every condition given must hold (AND)
      called_ae_title: RADSTREAM    # a string or list: regular expressions, any may match
      calling_ae_title: [MRI1, MRI2]
      modality: [MR]                #   (case-insensitive search: anchor with ^...$ for exact)
      body_part: [BRAIN, HEAD]
      station: "^MR-"
      series_description: ["flair"]
      tags:                         # any DICOM keyword the event (or file) carries
        SeriesNumber: {min: 1, max: 99}      # a range (inclusive; min or max may be left out)
        Manufacturer: {regex: [siemens], not_regex: [test]}
    selection:                      # which completed series are sent
      series_description: ["flair"]
      exclude_description: ["localizer", "scout"]
      orientation: [axial]          # axial | coronal | sagittal (from ImageOrientationPatient)
      min_instances: 8
      slice_thickness: {max: 5.0}
      pick: all                     # all | latest (highest series number) | most_instances
    require:                        # for trigger RULE: fire once all of these are present
      - {name: flair, series_description: [flair]}
      - {name: t1c, series_description: ["t1.*(post|gd|\\+c)"]}
    trigger: SERIES_COMPLETE        # SERIES_COMPLETE | STUDY_COMPLETE | RULE, or a list of them
    completion:                     # the aggregator's quiet periods for series this pipeline routes
      series_quiet_s: 120           #   (optional; over the called AE title's; longest wins if
      patient_quiet_s: 300          #   several pipelines route one series)
    model: {name: brain_lesion_ref, version: "1"}
    operators: [...]

Plain numbers in a condition mean equality; ``{regex, not_regex, min, max}`` is the long form.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from radstream.events.models import Trigger
from radstream.pipelines.facts import refusal, routing_keywords
from radstream.pipelines.operators_spec import OperatorSpec, TritonModelSpec

if TYPE_CHECKING:
    from radstream.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PIPELINES_DIR = PROJECT_ROOT / "pipelines"


class Condition(BaseModel):
    """One condition on one attribute: regular expressions (any) and/or a numeric range."""

    model_config = ConfigDict(extra="forbid")

    regex: list[str] = Field(default_factory=list, description="any may match (re.search, case-insensitive)")
    not_regex: list[str] = Field(default_factory=list, description="none may match")
    min: float | None = None
    max: float | None = None

    @field_validator("regex", "not_regex")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regular expression {p!r}: {exc}") from exc
        return v

    def test(self, value: Any) -> tuple[bool, str]:
        """(passes, why) for one value (a list value passes if any element passes)."""
        if isinstance(value, list | tuple):
            results = [self.test(v) for v in value]
            ok = [r for r in results if r[0]]
            return (True, ok[0][1]) if ok else (False, results[0][1] if results else "no value")
        if value is None or value == "":
            return False, "missing"
        text = str(value)
        if self.regex and not any(re.search(p, text, re.IGNORECASE) for p in self.regex):
            return False, f"{text!r} matches none of {self.regex}"
        for p in self.not_regex:
            if re.search(p, text, re.IGNORECASE):
                return False, f"{text!r} matches excluded {p!r}"
        if self.min is not None or self.max is not None:
            try:
                num = float(value)
            except (TypeError, ValueError):
                return False, f"{text!r} is not a number"
            if self.min is not None and num < self.min:
                return False, f"{num:g} < {self.min:g}"
            if self.max is not None and num > self.max:
                return False, f"{num:g} > {self.max:g}"
        return True, f"{text!r} ok"


def _condition(raw: Any) -> Any:
    if raw is None or isinstance(raw, Condition | dict):
        return raw
    if isinstance(raw, bool):
        raise ValueError("a condition is a string, number, list or mapping")
    if isinstance(raw, int | float):
        return {"min": raw, "max": raw}
    if isinstance(raw, str):
        return {"regex": [raw]}
    if isinstance(raw, list):
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in raw) and raw:
            return {"regex": [f"^{x:g}$" for x in raw]}
        return {"regex": [str(x) for x in raw]}
    raise ValueError(f"cannot read a condition from {raw!r}")


Cond = Annotated[Condition | None, BeforeValidator(_condition)]


class Routing(BaseModel):
    """Which series a pipeline looks at. Every condition given must hold."""

    model_config = ConfigDict(extra="forbid")

    called_ae_title: Cond = None
    calling_ae_title: Cond = None
    modality: Cond = None
    body_part: Cond = None
    station: Cond = None
    series_description: Cond = None
    manufacturer: Cond = None
    tags: dict[str, Cond] = Field(default_factory=dict, description="DICOM keyword -> condition")

    def conditions(self) -> list[tuple[str, Condition]]:
        out = [(name, c) for name in ("called_ae_title", "calling_ae_title", "modality", "body_part", "station",
                                      "series_description", "manufacturer")
               if (c := getattr(self, name)) is not None]
        out += [(k, c) for k, c in self.tags.items() if c is not None]
        return out


Orientation = Literal["axial", "coronal", "sagittal", "oblique"]


class SelectionRule(BaseModel):
    """Which of the routed series are sent to the model."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="role of the series (for require / explanations)")
    series_description: Cond = None
    exclude_description: list[str] = Field(default_factory=list)
    modality: Cond = None
    orientation: list[Orientation] = Field(default_factory=list)
    min_instances: int = Field(1, ge=1)
    max_instances: int | None = Field(None, ge=1)
    slice_thickness: Cond = None
    tags: dict[str, Cond] = Field(default_factory=dict)
    pick: Literal["all", "latest", "most_instances"] = "all"


def _triggers(raw: Any) -> Any:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, dict):
        return [raw.get("on")]
    return raw


class Completion(BaseModel):
    """This pipeline's quiet periods for the series it routes (the aggregator's part).

    They take precedence over the defaults and the called AE title's; where several
    pipelines route one series, the longest of each applies, so no pipeline sees it early.
    Without ``patient_quiet_s``, the study waits at least ``series_quiet_s``.
    """

    model_config = ConfigDict(extra="forbid")

    series_quiet_s: float | None = Field(None, gt=0, description="the series closes after this long without instances")
    patient_quiet_s: float | None = Field(None, gt=0, description="the patient's studies close after this long")
    max_age_s: float | None = Field(None, gt=0, description="force-complete a series or study open this long")


AE_TITLE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")


class PipelineSpec(BaseModel):
    """A whole pipeline file. Every key is read by some process; an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = "1"
    description: str = ""
    enabled: bool = True
    shadow: bool = Field(False, description="requests are marked shadow (results not shown to readers)")
    qc_required: bool = Field(False, description="results reach readers and the PACS only after a QC approval")
    blinded: bool = Field(False, description="readers see the result without its model's identity")
    routing: Routing = Field(default_factory=Routing)
    selection: SelectionRule = Field(default_factory=SelectionRule)
    require: list[SelectionRule] = Field(default_factory=list, description="series that must all be present (RULE)")
    trigger: Annotated[list[Trigger], BeforeValidator(_triggers)] = Field(
        default_factory=lambda: [Trigger.SERIES_COMPLETE])
    ae_titles: list[str] = Field(
        default_factory=list, description="called AE titles of this pipeline: what is sent to one goes here "
                                          "(routing skipped, selection applied); the SCP serves them")
    model: TritonModelSpec = Field(description="the Triton model (read by the inference worker)")
    operators: list[OperatorSpec] = Field(min_length=1, description="run in order by the inference worker")
    request_timeout_s: float = Field(600.0, gt=0, description="a request running longer fails (retriable)")
    completion: Completion | None = Field(None, description="quiet periods of the series this pipeline routes")

    @field_validator("ae_titles")
    @classmethod
    def _ae_titles(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if not AE_TITLE_RE.match(t)]
        if bad:
            raise ValueError(f"not AE titles (1-16 characters, no backslash or control characters): {bad}")
        return v

    def named_tags(self) -> set[str]:
        """The DICOM keywords this file's rules name under ``tags:``."""
        rules = [self.selection, *self.require]
        return set(self.routing.tags) | {kw for r in rules for kw in r.tags}

    @field_validator("trigger")
    @classmethod
    def _known_triggers(cls, v: list[Trigger]) -> list[Trigger]:
        bad = [t for t in v if t not in (Trigger.SERIES_COMPLETE, Trigger.STUDY_COMPLETE, Trigger.RULE)]
        if bad or not v:
            raise ValueError("trigger is SERIES_COMPLETE, STUDY_COMPLETE or RULE (or a list of them)")
        return v

    def model_post_init(self, __context: Any) -> None:
        if Trigger.RULE in self.trigger and not self.require:
            raise ValueError(f"pipeline {self.name}: trigger RULE needs a `require` list")
        refused = sorted({why for kw in self.named_tags() if (why := refusal(kw)) is not None})
        if refused:
            raise ValueError(f"pipeline {self.name}: a rule names what events do not carry: {'; '.join(refused)}")
        ops = [o.op for o in self.operators]
        if "blinding" in ops and not self.blinded:
            raise ValueError(f"pipeline {self.name}: the blinding operator needs `blinded: true`")


def load_pipeline_file(path: Path) -> PipelineSpec:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a pipeline file holds a mapping")
    spec = PipelineSpec.model_validate(data)
    if path.stem != spec.name:
        raise ValueError(f"{path}: name {spec.name!r} does not match the file name")
    return spec


def load_pipelines(directory: Path | None = None, names: list[str] | None = None) -> list[PipelineSpec]:
    """The enabled pipeline files of the folder, validated; with ``names``, those files (an explicit
    choice runs a file even where it says ``enabled: false``: an opt-in pipeline)."""
    folder = directory or DEFAULT_PIPELINES_DIR
    specs = []
    for path in sorted(folder.glob("*.yaml")):
        if names is not None and path.stem not in names:
            continue
        spec = load_pipeline_file(path)
        if spec.enabled or names is not None:
            specs.append(spec)
    return specs


def resolve_pipeline(ref: str, directory: Path | None = None) -> PipelineSpec:
    """A pipeline by name (in the folder) or by path."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_pipeline_file(p)
    return load_pipeline_file((directory or DEFAULT_PIPELINES_DIR) / f"{ref}.yaml")


def called_ae_routes(settings: Settings, specs: list[PipelineSpec]) -> dict[str, list[str]]:
    """Every called AE title served -> the pipelines it names ([]: the routing rules decide).

    ``dicom.ae_title`` names none; ``ingest.called_ae_titles`` and the pipeline files' ``ae_titles`` add
    theirs (an AE title named in both feeds the union).
    """
    routes: dict[str, set[str]] = {settings.dicom.ae_title: set()}
    known = {s.name for s in specs}
    for title, names in settings.ingest.called_ae_titles.items():
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"ingest.called_ae_titles[{title!r}] names pipelines this deployment does not run: "
                             f"{', '.join(unknown)} (runs: {', '.join(sorted(known))})")
        routes.setdefault(title, set()).update(names)
    for spec in specs:
        for title in spec.ae_titles:
            routes.setdefault(title, set()).add(spec.name)
    return {title: sorted(names) for title, names in routes.items()}


def collected_keywords(settings: Settings, specs: list[PipelineSpec]) -> frozenset[str]:
    """The routing tags the SCP collects onto its events (defaults, the site's, those the files name)."""
    return routing_keywords(settings.ingest.routing_tags, [kw for s in specs for kw in s.named_tags()])


def deployment_pipelines(settings: Settings) -> list[PipelineSpec]:
    """The pipeline files this deployment runs (``settings.pipelines`` if set, else every enabled one)."""
    specs = load_pipelines(settings.pipelines_folder, settings.pipelines)
    missing = sorted(set(settings.pipelines or ()) - {s.name for s in specs})
    if missing:
        raise ValueError(f"settings.pipelines names pipelines without a file in "
                         f"{settings.pipelines_folder}: {', '.join(missing)}")
    return specs
