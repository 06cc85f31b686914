"""Pipeline files and settings mean what they say: keys refused or used, one set of routing facts
(the SCP's event path and the rules tester agree), AE titles that name pipelines, QC and blinding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
import yaml
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from radstream.producers.header import read_header
from radstream.producers.scp import IngestServer
from radstream.stream_apps.grouping import Aggregator, TimeoutPolicy, Timeouts
from radstream.stream_apps.rules_tester import series_on_disk

from radstream.events.models import SeriesCompleted
from radstream.pipelines.facts import DEFAULT_ROUTING_TAGS, refusal
from radstream.pipelines.operators_spec import load_inference_pipeline
from radstream.pipelines.rules import SeriesFacts, routed
from radstream.pipelines.spec import (
    DEFAULT_PIPELINES_DIR,
    PipelineSpec,
    called_ae_routes,
    collected_keywords,
    deployment_pipelines,
)
from radstream.settings import Settings

pytestmark = pytest.mark.unit


def spec(**kw: object) -> PipelineSpec:
    return PipelineSpec.model_validate({"name": "p", "model": {"name": "m"}, "operators": [{"op": "load_series"}],
                                        **kw})


@pytest.mark.parametrize("tag, why", [
    ("ProtocolNmae", "not a DICOM keyword"),
    ("PixelData", "which events do not carry"),
    ("ReferencedImageSequence", "which events do not carry"),
    ("IconImageSequence", "which events do not carry"),
])
def test_a_rule_naming_what_events_do_not_carry_is_refused(tag: str, why: str) -> None:
    for where in ({"routing": {"tags": {tag: "x"}}}, {"selection": {"tags": {tag: "x"}}},
                  {"trigger": "RULE", "require": [{"name": "r", "tags": {tag: "x"}}]}):
        with pytest.raises(ValidationError, match=why):
            spec(**where)


def test_carried_attributes_are_accepted_and_collected(tmp_path: Path) -> None:
    s = spec(routing={"tags": {"SequenceName": "tse", "SeriesNumber": 3, "DeviceSerialNumber": "^123"}})
    assert refusal("Manufacturer") is None and refusal("ProtocolName") is None
    keywords = collected_keywords(Settings(ingest={"routing_tags": ["BodyPartThickness"]}), [s])  # type: ignore[call-arg]
    # the defaults, the site's extra ones and those a file names; the event fields need no collecting
    assert {"DeviceSerialNumber", "BodyPartThickness", "SequenceName", *DEFAULT_ROUTING_TAGS} <= keywords
    assert "SeriesNumber" not in keywords
    with pytest.raises(ValidationError, match="not a DICOM keyword"):
        Settings(ingest={"routing_tags": ["Protocol"]})  # type: ignore[call-arg]


def test_settings_that_moved_into_the_pipeline_files_are_refused() -> None:
    with pytest.raises(ValidationError, match="qc_required: true"):
        Settings(sinks={"qc_required": ["hip-fracture"]})  # type: ignore[call-arg]
    for section in ("dispatcher", "inference"):
        with pytest.raises(ValidationError, match="top-level pipelines_dir"):
            Settings(**{section: {"pipelines_dir": "/x"}})  # type: ignore[arg-type]


def test_blinded_decides_blinding(tmp_path: Path) -> None:
    liver = load_inference_pipeline("liver")
    ops = [o.op for o in liver.operators]
    assert liver.blinded and ops.index("blinding") == ops.index("seg_writer") - 1  # added before the writers
    brain = load_inference_pipeline("brain-tumour")
    assert "blinding" not in [o.op for o in brain.operators]
    with pytest.raises(ValidationError, match="needs `blinded: true`"):
        spec(operators=[{"op": "load_series"}, {"op": "blinding"}])
    data = yaml.safe_load((DEFAULT_PIPELINES_DIR / "brain-tumour.yaml").read_text())
    (tmp_path / "brain-tumour.yaml").write_text(yaml.safe_dump({**data, "outputs": ["seg"]}))
    with pytest.raises(ValidationError, match="outputs"):  # the worker refuses unknown keys as the dispatcher does
        load_inference_pipeline("brain-tumour", tmp_path)


def test_called_ae_titles_name_pipelines_from_settings_and_files(tmp_path: Path) -> None:
    shipped = deployment_pipelines(Settings())
    routes = called_ae_routes(Settings(ingest={"called_ae_titles": {"RS-BRAIN": ["liver"], "RS-ANY": []}}),  # type: ignore[call-arg]
                              shipped)
    assert routes["RADSTREAM"] == [] and routes["RS-ANY"] == []
    assert routes["RS-BRAIN"] == ["brain-tumour", "liver"]  # the file's and the setting's
    assert routes["RS-LIVER"] == ["liver"] and routes["RS-HIP"] == ["hip-fracture"]
    with pytest.raises(ValueError, match="does not run: lung"):
        called_ae_routes(Settings(ingest={"called_ae_titles": {"RS-LUNG": ["lung"]}}), shipped)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="not AE titles"):
        spec(ae_titles=["A\\B"])
    with pytest.raises(ValueError, match="without a file"):
        deployment_pipelines(Settings(pipelines=["brain-tumour", "lung"]))  # type: ignore[call-arg]
    brain = next(s for s in shipped if s.name == "brain-tumour")
    ct = SeriesFacts("1", "1.1", 1, {"Modality": "CT", "CalledAETitle": "RS-BRAIN"}, ["brain-tumour"])
    assert routed(brain, ct).selected  # the AE title chose it: its routing rules are not applied
    assert not routed(next(s for s in shipped if s.name == "liver"), ct).selected


def _files(tmp_path: Path) -> Path:
    from radstream.synth.generate import SynthConfig, synthesize

    synthesize(tmp_path / "synth", SynthConfig(seed=5, brain_patients=1, liver_patients=0, hip_patients=1,
                                               timepoints=1))
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(sorted((tmp_path / "synth").rglob("*.dcm"))):
        shutil.copy(f, folder / f"s{i:04d}.dcm")
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb.dcm"):
        path = get_testdata_file(name)
        assert path
        shutil.copy(path, folder / name)
    return folder


def test_live_facts_equal_the_testers_facts(tmp_path: Path, base_settings: Settings) -> None:
    """The SCP's own event path, then the aggregator, give the dispatcher the facts the tester reads from disk."""
    folder = _files(tmp_path)
    settings = base_settings.model_copy(update={"ingest": base_settings.ingest.model_copy(
        update={"publish": False, "called_ae_titles": {"RS-TEST": ["brain-tumour"]}})})
    scp = IngestServer(settings)
    agg = Aggregator(TimeoutPolicy(Timeouts(5, 5, 3600), {}, retain_closed_s=3600))
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        h = read_header(f, str(ds.SOPClassUID), str(ds.SOPInstanceUID), f.stat().st_size)
        agg.add(scp._event(h, "0" * 64, f.stat().st_size, f"file:///{f.name}", "MR01", "RS-TEST", "127.0.0.1:1"),
                now=1000.0)
    live = {e.series_instance_uid: SeriesFacts.from_event(e) for e in agg.expire_due(2000.0)
            if isinstance(e, SeriesCompleted)}
    on_disk = {f.series_instance_uid: f for f in series_on_disk(folder, scp.routing_keywords, "RS-TEST", "MR01",
                                                                 ["brain-tumour"])}
    assert set(live) == set(on_disk) and len(live) >= 5
    for uid, facts in live.items():
        assert facts.attrs == on_disk[uid].attrs, uid
        assert facts.instance_count == on_disk[uid].instance_count and facts.ae_pipelines == ["brain-tumour"]
    # what the routing tags add: values the event fields never had
    mr = next(f for f in live.values() if f.attrs.get("Modality") == "MR" and "ImageType" in f.attrs)
    assert isinstance(mr.attrs["ImageType"], list) and "Manufacturer" in mr.attrs
