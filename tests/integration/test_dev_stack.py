"""`radstream dev up|status|down` and `topics describe` as a user runs them, on private ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from radstream.devenv.process import free_port, pid_alive

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def _run(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "radstream.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_dev_up_status_topics_down(tmp_path: Path) -> None:
    kport, pport = free_port(), free_port()
    env = {
        **os.environ,
        "RADSTREAM_HOME": str(tmp_path / "home"),
        "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kport}",
        "RADSTREAM_POSTGRES__PORT": str(pport),
        "RADSTREAM_POSTGRES__HOST": "127.0.0.1",
        "RADSTREAM_TRITON__MANAGED": "false",  # Triton has its own tests; keep this one quick
    }
    try:
        first = _run(["dev", "up"], env)
        assert re.search(r"^kafka +up ", first, re.M) and re.search(r"^postgres +up ", first, re.M)
        again = _run(["dev", "up"], env)  # harmless twice: same pids
        assert again == first
        status = _run(["dev", "status"], env)
        assert f"127.0.0.1:{kport}" in status and f"127.0.0.1:{pport}" in status
        topics = _run(["topics", "describe"], env)
        for t in ("instances", "series", "studies", "results", "feedback", "deadletter", "requests.liver"):
            assert f"radstream.{t} " in topics
        with psycopg.connect(
            f"host=127.0.0.1 port={pport} user=radstream password=radstream dbname=radstream"
        ) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            # dev up applied the database schema
            assert conn.execute("select count(*) from schema_migrations").fetchone()[0] >= 1
        home = tmp_path / "home"
        pids = [int((home / n / f"{n}.pid").read_text()) for n in ("kafka", "postgres")]
        assert all(pid_alive(p) for p in pids)
    finally:
        down = _run(["dev", "down"], env)
    assert "kafka" in down and "postgres" in down
    assert not any(pid_alive(p) for p in pids)
    assert "down" in _run(["dev", "status"], env)


def _free_run(n: int) -> int:
    """A port p with p .. p+n-1 all free (the cluster takes consecutive ports)."""
    from radstream.devenv.process import port_open

    for _ in range(50):
        base = free_port()
        if base + n < 65535 and not any(port_open("127.0.0.1", base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


def test_dev_up_brokers_3_runs_a_replicated_cluster(tmp_path: Path) -> None:
    kport, pport = _free_run(6), free_port()
    env = {
        **os.environ,
        "RADSTREAM_HOME": str(tmp_path / "home"),
        "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kport}",
        "RADSTREAM_POSTGRES__PORT": str(pport),
        "RADSTREAM_POSTGRES__HOST": "127.0.0.1",
        "RADSTREAM_TRITON__MANAGED": "false",
    }
    bootstrap = ",".join(f"127.0.0.1:{kport + 2 * i}" for i in range(3))
    home = tmp_path / "home"
    try:
        first = _run(["dev", "up", "--brokers", "3"], env)
        for i in (1, 2, 3):
            assert re.search(rf"^kafka-{i} +up +127\.0\.0\.1:{kport + 2 * (i - 1)} ", first, re.M), first
        assert f"export RADSTREAM_KAFKA__BOOTSTRAP_SERVERS={bootstrap}" in first
        assert "export RADSTREAM_KAFKA__REPLICATION_FACTOR=3" in first
        # a client told what `dev up` printed sees every topic on three replicas, min ISR 2
        client_env = {**env, "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                      "RADSTREAM_KAFKA__REPLICATION_FACTOR": "3"}
        topics = _run(["topics", "describe"], client_env)
        rows = [line for line in topics.splitlines() if line.startswith("radstream.")]
        assert len(rows) >= 8 and all("replication=3" in r and "min.insync.replicas=2" in r for r in rows), topics
        pids = [int((home / "kafka" / f"node-{i}" / "kafka.pid").read_text()) for i in (1, 2, 3)]
        assert all(pid_alive(p) for p in pids)
        status = _run(["dev", "status"], env)  # remembers the cluster
        assert all(f"kafka-{i}" in status for i in (1, 2, 3))
    finally:
        down = _run(["dev", "down"], env)
    assert "kafka" in down
    assert not any(pid_alive(p) for p in pids)
