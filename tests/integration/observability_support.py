"""Read a process's /metrics and health endpoints; run `radstream` subcommands as the deployment does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from radstream.settings import Settings

RADSTREAM = str(Path(sys.executable).with_name("radstream"))


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def health(port: int, path: str = "healthz") -> tuple[int, dict[str, object]]:
    r = httpx.get(f"http://127.0.0.1:{port}/{path}", timeout=10)
    return r.status_code, r.json()


def child_env(settings: Settings, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """What a container gets: settings as RADSTREAM_* variables, observability ports of this test."""
    env = dict(os.environ)
    env.update({
        "RADSTREAM_HOME": str(settings.home),
        "RADSTREAM_SITE_SECRET": settings.site_secret.get_secret_value(),
        "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RADSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RADSTREAM_OBSERVABILITY__PORTS": json.dumps(ports),
        "RADSTREAM_POSTGRES__HOST": settings.postgres.host,
        "RADSTREAM_POSTGRES__PORT": str(settings.postgres.port),
        "RADSTREAM_POSTGRES__USER": settings.postgres.user,
        "RADSTREAM_POSTGRES__PASSWORD": settings.postgres.password.get_secret_value(),
        "RADSTREAM_POSTGRES__DATABASE": settings.postgres.database,
        "RADSTREAM_POSTGRES__MANAGED": "false",
        "RADSTREAM_TRITON__HOST": settings.triton.host,
        "RADSTREAM_TRITON__HTTP_PORT": str(settings.triton.http_port),
        "RADSTREAM_TRITON__GRPC_PORT": str(settings.triton.grpc_port),
    })
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    return subprocess.Popen([RADSTREAM, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
