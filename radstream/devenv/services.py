"""radstream's own processes run in the background on one machine (for the demo and `dev up --all`).

Each runs as ``python -m radstream.cli <subcommand>`` with a pid file and a log under
``<home>/run``; `radstream dev down` stops them before the infrastructure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from radstream.devenv.process import ManagedProcess
from radstream.settings import Settings

# /metrics ports of the per-pipeline inference workers: one each, above the fixed defaults
INFER_METRICS_BASE_PORT = 9130
# what `radstream dev up --all` and `radstream demo` run their processes with: a development machine,
# where placeholder secrets are replaced by random ones under <home>/secrets/ (radstream.secrets)
DEVELOPMENT_ENV = {"RADSTREAM_ENVIRONMENT": "development"}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def radstream_services(settings: Settings, extra_env: Mapping[str, str] | None = None) -> list[ServiceSpec]:
    """Every process of the pipeline: ingest, aggregate, dispatch, one worker per pipeline, sinks, web.

    ``ingest`` is the ingest pool when the settings ask for one (``ingest.processes``, e.g.
    ``RADSTREAM_INGEST__PROCESSES=2 radstream dev up --all``): `radstream ingest` reads it, so its
    pid file is the pool's supervisor and its processes serve /metrics on ``ingest.pool_metrics_port`` + slot.
    """
    env = dict(extra_env or {})
    specs = [
        ServiceSpec("ingest", ("ingest",), env),
        ServiceSpec("aggregate", ("aggregate",), env),
        ServiceSpec("dispatch", ("dispatch",), env),
    ]
    infer_off = settings.observability.port_for("infer") == 0  # /metrics of the workers switched off
    for i, pipeline in enumerate(settings.pipeline_names()):
        ports = {**settings.observability.ports, "infer": 0 if infer_off else INFER_METRICS_BASE_PORT + i}
        specs.append(ServiceSpec(f"infer-{pipeline}", ("infer", "--pipeline", pipeline),
                                 {**env, "RADSTREAM_OBSERVABILITY__PORTS": json.dumps(ports)}))
    specs += [
        ServiceSpec("sink-results", ("sink", "results"), env),
        ServiceSpec("sink-feedback", ("sink", "feedback"), env),
        ServiceSpec("web", ("web",), env),
    ]
    return specs


class Services:
    """Start, stop and list radstream processes by pid file under ``<home>/run``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.home) / "run"

    def process(self, name: str) -> ManagedProcess:
        return ManagedProcess(name, self.run_dir / f"{name}.pid", self.run_dir / f"{name}.log")

    def start(self, specs: list[ServiceSpec]) -> list[str]:
        started = []
        base_env = dict(os.environ)
        # children read the same settings: the home folder must not depend on their cwd
        base_env["RADSTREAM_HOME"] = str(Path(self.settings.home).resolve())
        for spec in specs:
            proc = self.process(spec.name)
            if proc.running():
                continue
            proc.start([sys.executable, "-m", "radstream.cli", *spec.args], env={**base_env, **spec.env})
            started.append(spec.name)
        return started

    def known(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.is_dir() else []

    def running(self) -> dict[str, int]:
        out = {}
        for name in self.known():
            pid = self.process(name).pid()
            if pid is not None:
                out[name] = pid
        return out

    def stop_all(self) -> list[str]:
        return [name for name in self.known() if self.process(name).stop(timeout=30)]
