"""`radstream demo --stop`, the README's main job, as a user runs it (on private ports and home).

Everything real: Kafka, PostgreSQL and Triton (CPU) started by the demo, every radstream process,
synthetic exams sent over DICOM, and the results checked against the generator's ground truth.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from radstream.devenv.process import free_port, port_open
from radstream.settings import DEFAULT_METRICS_PORTS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def _free_pair() -> int:
    """A free port whose successor is free too (Kafka's controller listens on bootstrap + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free consecutive ports")


@pytest.mark.timeout(900)
def test_demo_runs_end_to_end_and_agrees_with_the_ground_truth(tmp_path_factory: pytest.TempPathFactory) -> None:
    # a short home: pytriton's unix sockets live under it (a socket path has at most 107 bytes)
    home = tmp_path_factory.mktemp("demo") / "home"
    ports = {
        "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_pair()}",
        "RADSTREAM_POSTGRES__PORT": str(free_port()),
        "RADSTREAM_TRITON__HTTP_PORT": str(free_port()),
        "RADSTREAM_TRITON__GRPC_PORT": str(free_port()),
        "RADSTREAM_TRITON__METRICS_PORT": str(free_port()),
        "RADSTREAM_DICOM__PORT": str(free_port()),
        "RADSTREAM_WEB__PORT": str(free_port()),
    }
    env = {
        **os.environ,
        **ports,
        "RADSTREAM_HOME": str(home),
        "RADSTREAM_POSTGRES__HOST": "127.0.0.1",
        # no fixed /metrics ports, so a demo the user left running cannot clash with this one
        "RADSTREAM_OBSERVABILITY__PORTS": json.dumps({name: 0 for name in DEFAULT_METRICS_PORTS}),
    }
    out = subprocess.run([sys.executable, "-m", "radstream.cli", "demo", "--stop", "--timeout", "420"],
                         env=env, capture_output=True, text=True, timeout=840)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "ALL RESULTS AGREE WITH THE GROUND TRUTH" in out.stdout, log[-6000:]
    assert "results 10/10" in out.stdout and ", 0 not acknowledged" in out.stdout
    rows = [line.split() for line in out.stdout.split("6/6 results", 1)[1].splitlines()
            if line.startswith(("brain-tumour ", "liver ", "hip-fracture "))]
    # six brain timepoints (with their changes from baseline and prior), the liver, two hip exams
    assert [r[0] for r in rows].count("brain-tumour") == 6, rows
    assert [r[0] for r in rows].count("liver") == 1 and [r[0] for r in rows].count("hip-fracture") == 2, rows
    assert all(r[4] == "completed" and "✓" in r for r in rows), rows
    changes = [r for r in rows if r[0] == "brain-tumour" and any(v[0] in "+-" and v.endswith("%") for v in r)]
    assert len(changes) == 4, rows  # timepoints 2 and 3 of each patient
    # the real network on the real image: deepbet on Colin27, its Dice against ch2bet sent as a reference SEG
    real = [line for line in out.stdout.split("6/6 results", 1)[1].splitlines() if line.startswith("brain-extraction ")]
    assert len(real) == 1 and "completed" in real[0] and "✓" in real[0], real
    m = re.search(r"Dice ([0-9.]+) vs ch2bet", real[0])
    assert m and float(m.group(1)) >= 0.93, real
    # the blinded liver study: both human sources and the model, and the expert agreeing with the model
    study = out.stdout.split("Blinded liver study", 1)[1]
    assert re.search(r"^expert\s+1\s", study, re.M) and re.search(r"^novice\s+1\s", study, re.M), study
    dice = [float(line.split()[-2]) for line in study.splitlines() if line.startswith("expert ") and "model:" in line]
    assert len(dice) == 3 and min(dice) >= 0.99, study
    # --stop left nothing listening
    for name, value in ports.items():
        port = int(value.rsplit(":", 1)[-1])
        assert not port_open("127.0.0.1", port), f"{name} {port} still open after --stop"
