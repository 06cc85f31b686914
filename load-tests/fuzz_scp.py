"""Fuzz the ingest SCP for N minutes: hypothesis mutations of real DICOM files.

A private Kafka broker (free ports) and a real ``radstream ingest`` process; rounds alternate
between the SCP over the network (every input: a status or an abort, then C-ECHO must work and
the process must be alive) and the C-STORE handler in process (a status, never an exception).
Crashing inputs are written to ``<out>/crashes.tsv`` (hex) to become regression tests.

    .venv/bin/python load-tests/fuzz_scp.py --minutes 10 --out reports/fuzz
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radstream.bench.fuzz import (
    HandlerTarget,
    Mutation,
    NetworkTarget,
    Seed,
    fuzz_input_strategy,
    load_seeds,
    mutate,
    record,
)
from radstream.devenv.kafka import KafkaServer
from radstream.devenv.process import ManagedProcess, exit_on_sigterm, free_port, port_open, wait_until


def synth_seeds(folder: Path) -> list[Path]:
    from radstream.synth.generate import SynthConfig, synthesize

    synthesize(folder, SynthConfig(seed=77, brain_patients=1, liver_patients=1, hip_patients=1, timepoints=1,
                                   mr_shape=(4, 32, 32), ct_shape=(4, 32, 32), dx_size=(64, 64), dx_images=1))
    return [next(iter(sorted((folder / k).rglob("*.dcm")))) for k in ("brain_mr", "liver_ct", "pelvis_dx")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("reports/fuzz"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="radstream-fuzz-"))
    seeds: list[Seed] = load_seeds(synth_seeds(work / "synth"), max_bytes=300_000)

    kafka = KafkaServer(work / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    port = free_port()
    env = {**os.environ, "RADSTREAM_HOME": str(work / "home"), "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
           "RADSTREAM_KAFKA__TOPIC_PREFIX": "fuzz", "RADSTREAM_DICOM__PORT": str(port),
           "RADSTREAM_DICOM__BIND_ADDRESS": "127.0.0.1", "RADSTREAM_INGEST__METRICS_PORT": "0",
           "RADSTREAM_OBSERVABILITY__PORTS": json.dumps({"ingest": 0})}
    from radstream.kafka.topics import create_topics
    from radstream.settings import Settings

    create_topics(Settings.model_validate({"kafka": {"bootstrap_servers": kafka.bootstrap, "topic_prefix": "fuzz"}}))
    scp = ManagedProcess("ingest", work / "ingest.pid", work / "ingest.log")
    scp.start([sys.executable, "-m", "radstream.cli", "ingest", "--log-level", "ERROR"], env=env)
    wait_until(lambda: port_open("127.0.0.1", port), 60, what="the SCP")
    scp_pid = scp.pid()

    net = NetworkTarget("127.0.0.1", port, work / "net")
    handler = HandlerTarget(work / "handler-home")
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    process_crashes = 0

    def net_round() -> None:
        @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(fuzz_input_strategy(len(seeds)), st.booleans())
        def run(spec: tuple[int, int, list[Mutation], int], unmodified: bool) -> None:
            if time.monotonic() > deadline:
                return
            seed, body = mutate(seeds, spec)
            net(seed, seed.body if unmodified else body)

        run()

    def handler_round() -> None:
        @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(fuzz_input_strategy(len(seeds)))
        def run(spec: tuple[int, int, list[Mutation], int]) -> None:
            if time.monotonic() > deadline:
                return
            seed, body = mutate(seeds, spec)
            with contextlib.suppress(Exception):  # recorded in the tally with its signature; keep fuzzing
                handler(seed, body)

        run()

    rounds = 0
    try:
        while time.monotonic() < deadline:
            # alternate: a round over the network (slow, ~100 inputs), a round in process (~1000)
            (net_round if rounds % 2 == 0 else handler_round)()
            rounds += 1
            if scp.pid() != scp_pid:
                process_crashes += 1
                print("SCP process died; restarting", flush=True)
                scp.start([sys.executable, "-m", "radstream.cli", "ingest", "--log-level", "ERROR"], env=env)
                wait_until(lambda: port_open("127.0.0.1", port), 60, what="the SCP")
                scp_pid = scp.pid()
            print(f"[{time.monotonic() - started:6.0f}s] {net.tally.line('network')} | "
                  f"{handler.tally.line('handler')}", flush=True)
    finally:
        scp.stop(timeout=10)
        kafka.stop()
    record(args.out / "crashes.tsv", net.tally.crashes + handler.tally.crashes)
    signatures: dict[str, int] = {}
    for c in handler.tally.crashes:
        signatures[c["signature"]] = signatures.get(c["signature"], 0) + 1
    summary = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "network": {"inputs": net.tally.tried, "scp_process_crashes": process_crashes,
                    "scp_unresponsive": len(net.tally.crashes), "outcomes": dict(net.tally.statuses)},
        "handler": {"inputs": handler.tally.tried, "exceptions": len(handler.tally.crashes),
                    "signatures": signatures, "outcomes": dict(handler.tally.statuses)},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if process_crashes == 0 and not net.tally.crashes else 1


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
