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
