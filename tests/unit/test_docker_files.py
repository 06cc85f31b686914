"""docker/ cannot run here (no Docker engine): prove it is consistent with the code instead."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from radstream.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for res in kust["resources"]:
        assert (K8S / res).is_file(), f"kustomization names a missing file {res}"
        docs.extend(d for d in yaml.safe_load_all((K8S / res).read_text()) if d)
    return docs


@pytest.fixture(scope="module")
def defaults() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _cli() -> Any:
    from radstream.cli.main import app

    cmd = typer.main.get_command(app)
    assert hasattr(cmd, "commands")  # a group (typer vendors its own click)
    return cmd


def assert_real_command(argv: list[str]) -> None:
    """``argv`` (after ``radstream``) names a real subcommand and only options it has."""
    cmd = _cli()
    i = 0
    while hasattr(cmd, "commands"):
        assert i < len(argv), f"{argv}: stops at a command group"
        sub = cmd.commands.get(argv[i])
        assert sub is not None, f"`radstream {' '.join(argv[: i + 1])}` is not a radstream subcommand"
        cmd, i = sub, i + 1
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for word in argv[i:]:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in opts, f"`radstream {' '.join(argv)}`: no option {word}"


def _radstream_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith("radstream:"):
            yield name, svc


def _images(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    out = [svc["image"] for svc in compose["services"].values()]
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        out += [c["image"] for c in spec.get("containers", [])]
    return out


def test_every_image_tag_is_pinned(compose: dict[str, Any], k8s_docs: list[dict[str, Any]]) -> None:
    images = _images(compose, k8s_docs)
    dockerfile = (DOCKER / "Dockerfile").read_text()
    images += re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.M)
    assert len(images) > 10
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and "/" not in tag, f"{image}: no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{image}: tag not pinned"
    by_name = {i.rpartition(":")[0]: i for i in images}
    assert by_name["apache/kafka"] == "apache/kafka:4.1.1"
    assert re.fullmatch(r"postgres:15\.\d+", by_name["postgres"])
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", by_name["nvcr.io/nvidia/tritonserver"])


def test_dockerfile_is_multi_stage_with_dcmtk_and_real_sources() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11[\d.]*-slim", text, re.M)
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.M)
    assert stages == ["builder", "runtime"]
    assert "pip wheel" in text and "--from=builder" in text
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"apt-get install[^\n]*\bdcmtk\b", runtime)
    assert "build-essential" not in runtime
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    assert re.search(r'ENTRYPOINT \["tini", "--", "radstream"\]', text)
    assert (DOCKER / "Dockerfile.dockerignore").is_file()


def test_every_service_command_is_a_real_radstream_subcommand(
    compose: dict[str, Any], k8s_docs: list[dict[str, Any]]
) -> None:
    commands: list[list[str]] = []
    for _, svc in _radstream_services(compose):
        commands.append(svc["command"])
        test = svc.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "radstream"]:
            commands.append(test[2:])
    for d in k8s_docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            if c["image"].split("/")[-1].startswith("radstream:"):
                commands.append(c["args"])
    assert len(commands) > 15
    for argv in commands:
        assert_real_command(argv)


def test_compose_has_the_whole_system(compose: dict[str, Any], defaults: Settings) -> None:
    services = compose["services"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "zookeeper" not in services
    triton = services["triton"]
    (dev,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert "./triton:/models:ro" in triton["volumes"]
    configs = sorted((DOCKER / "triton").glob("*/config.pbtxt"))
    assert configs, "the mounted model repository holds no model"
    infer = {svc["command"][2] for n, svc in services.items() if svc.get("command", [""])[0] == "infer"}
    assert infer == set(defaults.pipeline_names())
    for p in infer:
        assert (ROOT / "pipelines" / f"{p}.yaml").is_file()
    wanted = {("ingest",), ("aggregate",), ("dispatch",), ("sink", "results"), ("sink", "feedback"), ("web",),
              ("db", "migrate"), ("topics", "create")}
    have = {tuple(w for w in svc["command"] if not w.startswith("--")) for _, svc in _radstream_services(compose)}
    assert wanted <= have
    for name, svc in _radstream_services(compose):
        if name in ("topics", "migrate"):
            assert svc["restart"] == "no"
            continue
        assert svc["restart"] == "unless-stopped", name
        assert "healthcheck" in svc, name
    for svc in services.values():
        assert svc.get("restart") in ("unless-stopped", "no", "always", "on-failure"), svc


def test_secrets_come_from_files(compose: dict[str, Any], defaults: Settings) -> None:
    env = compose["x-radstream-env"]
    plain = [k for k in env if re.search(r"SECRET|PASSWORD|SALT", k) and not k.endswith("_FILE")]
    assert plain == [], f"secrets passed in plain environment: {plain}"
    declared = compose["secrets"]
    for key, path in env.items():
        if key.endswith("_FILE"):
            name = path.rsplit("/", 1)[-1]
            assert path == f"/run/secrets/{name}" and name in declared
    for spec in declared.values():
        f = DOCKER / spec["file"]
        assert f.is_file() or f.with_name(f.name + ".example").is_file(), f"no {f} nor its .example"
    # the settings really read them: every *_FILE key maps onto a secret setting
    for key in (k for k in env if k.endswith("_FILE")):
        parts = key[len("RADSTREAM_"): -len("_FILE")].lower().split("__")
        node: Any = defaults
        for p in parts:
            node = getattr(node, p)
        assert type(node).__name__ == "SecretStr", key
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name} mounts missing {src}"
    prov = DOCKER / "grafana" / "provisioning"
    assert (prov / "datasources" / "prometheus.yaml").is_file()
    assert yaml.safe_load((prov / "dashboards" / "radstream.yaml").read_text())["providers"]


def test_ports_match_the_settings(compose: dict[str, Any], k8s_docs: list[dict[str, Any]], defaults: Settings) -> None:
    ports = defaults.observability.ports
    services = compose["services"]
    assert services["ingest"]["ports"] == [f"{defaults.dicom.port}:{defaults.dicom.port}"]
    assert services["web"]["ports"] == [f"{defaults.web.port}:{defaults.web.port}"]
    assert str(defaults.dicom.port) in services["ingest"]["healthcheck"]["test"]
    assert defaults.dicom.ae_title in services["ingest"]["healthcheck"]["test"]
    cmd = services["triton"]["command"]
    for flag, port in (("http", defaults.triton.http_port), ("grpc", defaults.triton.grpc_port),
                       ("metrics", defaults.triton.metrics_port)):
        assert f"--{flag}-port={port}" in cmd
    assert defaults.kafka.bootstrap_servers.endswith(":9092")
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    for _, svc in _radstream_services(compose):
        test = svc.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "radstream", "healthcheck"]:
            assert ports.get(test[3], 0) > 0, f"healthcheck of {test[3]} has no port in the settings"
    # Prometheus scrapes each process on its settings port
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    scraped = {n: sd["port"] for job in prom["scrape_configs"] for sd in job.get("dns_sd_configs", [])
               for n in sd["names"]}
    expect = {"ingest": ports["ingest"], "aggregate": ports["aggregate"], "dispatch": ports["dispatch"],
              "infer-liver": ports["infer"], "sink-results": ports["sink_results"],
              "sink-feedback": ports["sink_feedback"], "web": ports["web"], "lag-exporter": ports["lag_exporter"]}
    for svc, port in expect.items():
        assert scraped[svc] == port, svc
        assert svc in services
    # Kubernetes: each container's metrics port is its component's settings port
    component_of = {"ingest": ports["ingest"], "aggregate": ports["aggregate"],
                    "dispatch": ports["dispatch"], "sink-results": ports["sink_results"],
                    "sink-feedback": ports["sink_feedback"], "web": ports["web"],
                    "lag-exporter": ports["lag_exporter"]}
    for d in k8s_docs:
        if d["kind"] not in ("Deployment", "StatefulSet") or d["metadata"]["name"] == "triton":
            continue
        (c,) = d["spec"]["template"]["spec"]["containers"]
        metrics = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
        name = d["metadata"]["name"]
        assert metrics == (ports["infer"] if name.startswith("infer-") else component_of[name]), name


def test_inference_scales_per_pipeline_on_lag(k8s_docs: list[dict[str, Any]], defaults: Settings) -> None:
    from radstream.consumers.inference.worker import group_id

    deployments = {d["metadata"]["name"]: d for d in k8s_docs if d["kind"] == "Deployment"}
    scaled = [d for d in k8s_docs if d["kind"] == "ScaledObject"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {f"infer-{p}" for p in defaults.pipeline_names()}
    for s in scaled:
        target = s["spec"]["scaleTargetRef"]["name"]
        pipeline = target.removeprefix("infer-")
        assert deployments[target]["spec"]["template"]["spec"]["containers"][0]["args"] == [
            "infer", "--pipeline", pipeline]
        (trig,) = s["spec"]["triggers"]
        assert trig["type"] == "kafka"
        assert trig["metadata"]["consumerGroup"] == group_id(Settings(), pipeline)
        assert trig["metadata"]["topic"] == defaults.topic(f"requests.{pipeline}")
        assert int(trig["metadata"]["lagThreshold"]) > 0
    gpu = deployments["triton"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    cm = next(d for d in k8s_docs if d["kind"] == "ConfigMap")
    assert not [k for k in cm["data"] if re.search(r"SECRET|PASSWORD|SALT", k) and not k.endswith("_FILE")]
    for d in deployments.values():
        for vol in d["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] == "radstream-secrets"


def _exported_metric_names() -> set[str]:
    names: set[str] = set()
    for folder in ("radstream", "producers", "consumers", "stream-apps"):
        for f in (ROOT / folder).rglob("*.py"):
            names.update(re.findall(r"[\"'](radstream_[a-z0-9_]+)[\"']", f.read_text(encoding="utf-8")))
    return names


def test_dashboard_charts_metrics_the_processes_export() -> None:
    dash = json.loads((DOCKER / "grafana" / "radstream-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"]]
    exported = _exported_metric_names()
    used: set[str] = set()
    for e in exprs:
        for m in re.findall(r"\b(radstream_[a-z0-9_]+)", e):
            used.add(m)
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            info = re.sub(r"_info$", "", base)
            assert m in exported or base in exported or info in exported, f"dashboard uses {m}, nothing exports it"
        for m in re.findall(r"\b(nv_[a-z_]+)", e):
            assert m.startswith("nv_inference_"), m  # Triton's own metrics
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("lag", "latency", "failures", "per minute"):
        assert word in titles
    assert "radstream_consumer_group_lag" in used and "radstream_end_to_end_seconds_bucket" in used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_the_scp_listens_beyond_loopback_only_where_deployed(
    compose: dict[str, Any], k8s_docs: list[dict[str, Any]], defaults: Settings
) -> None:
    # secure by default: a development or test SCP is reachable from this machine only ...
    assert defaults.dicom.bind_address == "127.0.0.1"
    # ... and the production shapes say explicitly that it listens on the container's interfaces
    assert compose["services"]["ingest"]["environment"]["RADSTREAM_DICOM__BIND_ADDRESS"] == "0.0.0.0"
    cm = next(d for d in k8s_docs if d["kind"] == "ConfigMap")
    assert cm["data"]["RADSTREAM_DICOM__BIND_ADDRESS"] == "0.0.0.0"
    ingest = next(d for d in k8s_docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "ingest")
    (container,) = ingest["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": cm["metadata"]["name"]}} in container["envFrom"]
    assert re.search(r"RADSTREAM_DICOM__BIND_ADDRESS=0\.0\.0\.0", (DOCKER / "Dockerfile").read_text())
    # the settings really read the variable
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"RADSTREAM_DICOM__BIND_ADDRESS": "0.0.0.0"}):
        assert Settings(_env_file=None).dicom.bind_address == "0.0.0.0"  # type: ignore[call-arg]


def test_durable_local_state_lives_on_volumes(compose: dict[str, Any], k8s_docs: list[dict[str, Any]]) -> None:
    """A C-STORE is answered success once its event is in the outbox: the outbox (and the store) must
    outlive the container and the pod, each ingest replica with its own outbox."""
    home = re.search(r"RADSTREAM_HOME=(\S+)", (DOCKER / "Dockerfile").read_text())
    assert home
    s = Settings(home=Path(home.group(1)))  # type: ignore[call-arg]
    durable = {"outbox": s.outbox_path.parent, "store": s.store_root}
    named = set(compose["volumes"])
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["ingest"]["volumes"]}
    for what, path in durable.items():
        assert mounts.get(str(path)) in named, f"compose: the ingest {what} ({path}) is not on a named volume"
    ingest = next(d for d in k8s_docs if d["metadata"]["name"] == "ingest" and d["kind"] != "Service")
    assert ingest["kind"] == "StatefulSet", "one outbox per replica needs a PVC per pod"
    pod = ingest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    by_path = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    per_pod = {t["metadata"]["name"] for t in ingest["spec"]["volumeClaimTemplates"]}
    shared = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert by_path[str(durable["outbox"])] in per_pod
    assert by_path[str(durable["store"])] in shared
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == ingest["spec"]["serviceName"]
               and d["spec"].get("clusterIP") == "None" for d in k8s_docs)
