"""`radstream bench`: bring up a private stack, replay the day plan, measure, write the report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from radstream.bench.measure import (
    LagProbe,
    ProcessProbe,
    Sampler,
    fetch_completions,
    fetch_results,
    percentile,
)
from radstream.bench.scanners import ScannerFleet
from radstream.bench.stack import BenchStack, StackConfig
from radstream.bench.workload import DayPlan, build_exams


@dataclass
class BenchOutcome:
    plan: dict[str, Any]
    stack: dict[str, Any]
    wall_s: float
    instances_sent: int
    instances_acked: int
    mb_acked: float
    send_window_s: float
    exams: dict[str, int]
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    completion: dict[str, dict[str, float]] = field(default_factory=dict)
    overhead_hip: dict[str, float] = field(default_factory=dict)
    lag_max: dict[str, float] = field(default_factory=dict)
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    missing_results: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


def run_bench(plan: DayPlan, stack_config: StackConfig, home: Path, out_dir: Path, echo: Callable[[str], None],
              drain_s: float = 300.0, keep: bool = False) -> BenchOutcome:
    started = time.monotonic()
    echo(f"exams: writing synthetic studies ({plan.exam_counts()}) ...")
    scanners = build_exams(plan, home.parent / "synth-cache")
    stack = BenchStack(home / "stack", stack_config)
    echo(f"stack: Kafka {stack.kafka.bootstrap}, PostgreSQL :{stack.postgres.port}, Triton :{stack.triton.grpc_port}, "
         f"DICOM :{stack.dicom_port} (home {stack.home}) ...")
    stack.up()
    try:
        # warm every pipeline once (model load, first-call costs) outside the measurement
        echo("stack up; replaying the day plan ...")
        fleet = ScannerFleet(scanners, stack.dicom_port, give_up_s=120.0)
        t0 = fleet.ledger.t0
        res = Sampler(ProcessProbe(stack.pids), interval_s=2.0, t0=t0).start()
        lag_probe = LagProbe(stack.settings)
        lag = Sampler(lag_probe, interval_s=2.0, t0=t0).start()
        fleet.run()
        send_done = time.monotonic() - t0
        acked = fleet.ledger.acked()
        echo(f"sent: {len(acked)}/{len(fleet.ledger.instances)} instances acknowledged in {send_done:.0f}s; "
             "waiting for results ...")
        studies = {(ex.study_instance_uid, ex.pipeline) for ex in fleet.exams()}
        deadline = time.monotonic() + drain_s
        rows = fetch_results(stack.settings)
        while time.monotonic() < deadline:
            rows = fetch_results(stack.settings)
            have = {(r.study_instance_uid, r.pipeline) for r in rows}
            if studies <= have:
                break
            time.sleep(2)
        time.sleep(4)  # a few more lag/resource samples once idle
        res.stop()
        lag.stop()
        lag_probe.close()
        rows = fetch_results(stack.settings)
        completions = fetch_completions(stack.settings)
        outcome = summarise(plan, stack, fleet, rows, completions, res, lag, studies, send_done,
                            time.monotonic() - started)
        from radstream.bench.report import write_report

        write_report(outcome, fleet, rows, completions, res, lag, out_dir)
        echo(f"report: {out_dir / 'report.md'}")
        return outcome
    finally:
        if not keep:
            stack.down()


def summarise(plan: DayPlan, stack: BenchStack, fleet: ScannerFleet, rows: list[Any], completions: list[Any],
              res: Sampler, lag: Sampler, studies: set[tuple[str, str]], send_s: float,
              wall_s: float) -> BenchOutcome:
    ledger = fleet.ledger
    acked = ledger.acked()
    ack_times = ledger.ack_times()
    span = (ack_times[-1] - ack_times[0]) if len(ack_times) > 1 else 0.0
    counts: dict[str, int] = {}
    for ex in fleet.exams():
        counts[ex.pipeline] = counts.get(ex.pipeline, 0) + 1
    ours = [r for r in rows if (r.study_instance_uid, r.pipeline) in studies]
    results: dict[str, dict[str, float]] = {}
    for p in sorted({r.pipeline for r in ours}):
        e2e = [r.e2e_s for r in ours if r.pipeline == p]
        comp = [r.compute_s for r in ours if r.pipeline == p and r.status == "completed"]
        results[p] = {
            "exams": counts.get(p, 0), "results": len(e2e),
            "completed": sum(1 for r in ours if r.pipeline == p and r.status == "completed"),
            "e2e_p50_s": percentile(e2e, 50), "e2e_p90_s": percentile(e2e, 90), "e2e_p99_s": percentile(e2e, 99),
            "compute_p50_s": percentile(comp, 50),
        }
    completion: dict[str, dict[str, float]] = {}
    for kind in ("series", "study"):
        d = [c.delay_s for c in completions if c.kind == kind]
        quiet = stack.config.series_quiet_s if kind == "series" else stack.config.patient_quiet_s
        completion[kind] = {"count": len(d), "quiet_s": quiet, "p50_s": percentile(d, 50),
                            "p90_s": percentile(d, 90), "p99_s": percentile(d, 99)}
    hip = [r for r in ours if r.pipeline == "hip-fracture" and r.status == "completed"]
    over = [r.e2e_s - stack.config.patient_quiet_s - r.compute_s for r in hip]
    overhead = {"n": len(over), "quiet_s": stack.config.patient_quiet_s, "p50_s": percentile(over, 50),
                "p90_s": percentile(over, 90), "p99_s": percentile(over, 99)}
    lag_max: dict[str, float] = {}
    for s in lag.samples:
        for k, v in s.values.items():
            lag_max[k.removeprefix("lag:")] = max(lag_max.get(k.removeprefix("lag:"), 0.0), v)
    resources: dict[str, dict[str, float]] = {}
    for s in res.samples:
        for k, v in s.values.items():
            metric, name = k.split(":", 1)
            r = resources.setdefault(name, {"cpu_mean_pct": 0.0, "cpu_max_pct": 0.0, "rss_max_mib": 0.0, "n": 0.0})
            if metric == "cpu":
                r["cpu_mean_pct"] += v
                r["n"] += 1
                r["cpu_max_pct"] = max(r["cpu_max_pct"], v)
            else:
                r["rss_max_mib"] = max(r["rss_max_mib"], v)
    for r in resources.values():
        r["cpu_mean_pct"] = r["cpu_mean_pct"] / r["n"] if r["n"] else 0.0
        r.pop("n")
    have = {(r.study_instance_uid, r.pipeline) for r in ours}
    plan_d = asdict(plan)
    return BenchOutcome(
        plan=plan_d, stack={"series_quiet_s": stack.config.series_quiet_s,
                            "patient_quiet_s": stack.config.patient_quiet_s, "partitions": stack.config.partitions},
        wall_s=wall_s, instances_sent=len(ledger.sent()), instances_acked=len(acked),
        mb_acked=ledger.bytes_acked() / 2**20, send_window_s=span, exams=counts, results=results,
        completion=completion, overhead_hip=overhead, lag_max=lag_max, resources=resources,
        missing_results=len(studies - have),
        raw={"finished": datetime.now(UTC).isoformat(), "send_s": send_s},
    )


def outcome_json(o: BenchOutcome) -> str:
    return json.dumps(asdict(o), indent=2, default=str)
