"""The bench report: ``report.md``, ``outcome.json`` and PNG plots in one folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from radstream.bench.measure import Completion, ResultRow, Sampler
from radstream.bench.scanners import ScannerFleet


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.2f}"  # NaN


def write_report(o: Any, fleet: ScannerFleet, rows: list[ResultRow], completions: list[Completion],
                 res: Sampler, lag: Sampler, out: Path) -> None:
    from radstream.bench.run import outcome_json

    out.mkdir(parents=True, exist_ok=True)
    (out / "outcome.json").write_text(outcome_json(o))
    plots = _plots(o, fleet, rows, res, lag, out)
    p = o.plan
    speed = p["speed"]
    lines = [
        f"# radstream bench — {speed:g}x",
        "",
        f"Machine: {os.cpu_count()} CPUs, everything on one host (Kafka, PostgreSQL, Triton on CPU, "
        "every radstream process). Reference models (not clinical).",
        "",
        "## Load",
        "",
        f"- scanners: {p['mr_scanners']} MR (brain), {p['ct_scanners']} CT (liver), {p['dx_rooms']} DX rooms (hip), "
        f"kinds {', '.join(p['kinds'])}; each a calling AE title with its own associations",
        f"- compressed day at {speed:g}x: MR exam every {p['mr_every_s'] / speed:.1f}s streamed over "
        f"{p['mr_stream_s'] / speed:.1f}s, CT every {p['ct_every_s'] / speed:.1f}s over "
        f"{p['ct_stream_s'] / speed:.1f}s, DX every {p['dx_every_s'] / speed:.1f}s ({p['dx_images']} images over "
        f"{p['dx_stream_s'] / speed:.1f}s); exams start during {p['window_s']:.0f}s",
        f"- sizes: MR {p['mr_shape']} (slices, rows, cols), CT {p['ct_shape']}, DX {p['dx_size']} x {p['dx_images']}",
        f"- quiet periods: series {o.stack['series_quiet_s']}s, patient {o.stack['patient_quiet_s']}s "
        "(production default 60s)",
        "",
        "## Throughput",
        "",
        f"- exams: {o.exams}",
        f"- instances sent {o.instances_sent}, acknowledged {o.instances_acked} ({o.mb_acked:.1f} MiB) over "
        f"{o.send_window_s:.0f}s: {o.instances_acked / max(o.send_window_s, 1e-9):.1f} instances/s, "
        f"{o.mb_acked / max(o.send_window_s, 1e-9):.2f} MiB/s (offered load, paced by the schedule)",
        f"- studies without a result at the end: {o.missing_results}",
        "",
        "## Completion delay (event time - last instance received)",
        "",
        "| kind | count | quiet period s | p50 s | p90 s | p99 s |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {k} | {int(v['count'])} | {v['quiet_s']:g} | {_fmt(v['p50_s'])} | {_fmt(v['p90_s'])} | "
          f"{_fmt(v['p99_s'])} |" for k, v in o.completion.items()),
        "",
        "## End-to-end latency per pipeline (results.stored_at - last instance received)",
        "",
        "| pipeline | exams | results | completed | p50 s | p90 s | p99 s | model compute p50 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {k} | {int(v['exams'])} | {int(v['results'])} | {int(v['completed'])} | {_fmt(v['e2e_p50_s'])} | "
          f"{_fmt(v['e2e_p90_s'])} | {_fmt(v['e2e_p99_s'])} | {_fmt(v['compute_p50_s'])} |"
          for k, v in o.results.items()),
        "",
        "## End-to-end overhead, hip pipeline (issue 6)",
        "",
        "overhead = stored_at - last instance received - patient quiet period - model compute "
        "(timings_ms.total: load, preprocess, Triton, postprocess, SR)",
        "",
        f"- n = {int(o.overhead_hip['n'])}, p50 {_fmt(o.overhead_hip['p50_s'])} s, "
        f"p90 {_fmt(o.overhead_hip['p90_s'])} s, p99 {_fmt(o.overhead_hip['p99_s'])} s",
        "",
        "## Consumer lag (max over the run, messages)",
        "",
        "| group | max lag |",
        "|---|---:|",
        *(f"| {k} | {int(v)} |" for k, v in sorted(o.lag_max.items())),
        "",
        "## Resources per process (with children)",
        "",
        "| process | CPU mean % | CPU max % | RSS max MiB |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {v['cpu_mean_pct']:.0f} | {v['cpu_max_pct']:.0f} | {v['rss_max_mib']:.0f} |"
          for k, v in sorted(o.resources.items())),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in plots),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


def _plots(o: Any, fleet: ScannerFleet, rows: list[ResultRow], res: Sampler, lag: Sampler, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = []
    speed = o.plan["speed"]
    studies = {(ex.study_instance_uid, ex.pipeline) for ex in fleet.exams()}
    ours = [r for r in rows if (r.study_instance_uid, r.pipeline) in studies]

    fig, ax = plt.subplots(figsize=(7, 4))
    for p in sorted({r.pipeline for r in ours}):
        v = np.sort([r.e2e_s for r in ours if r.pipeline == p])
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"{p} (n={len(v)})")
    ax.set_xlabel("result stored - last instance received (s)")
    ax.set_ylabel("fraction of exams")
    ax.set_title(f"End-to-end latency per pipeline, {speed:g}x (quiet periods {o.stack['series_quiet_s']:g}/"
                 f"{o.stack['patient_quiet_s']:g}s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    names.append("latency_cdf.png")

    acks = fleet.ledger.ack_times()
    fig, ax1 = plt.subplots(figsize=(7, 4))
    if acks:
        bins = np.arange(0, max(acks) + 5, 5.0)
        hist, edges = np.histogram(acks, bins=bins)
        ax1.plot(edges[:-1], hist / 5.0, label="instances acknowledged /s")
    ax1.set_xlabel("time since start (s)")
    ax1.set_ylabel("instances/s")
    ax2 = ax1.twinx()
    groups = sorted({k for s in lag.samples for k in s.values})
    for g in groups:
        ax2.plot([s.t for s in lag.samples], [s.values.get(g, 0) for s in lag.samples], "--",
                 label=g.removeprefix("lag:").removeprefix("radstream-"))
    ax2.set_ylabel("consumer lag (messages)")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax1.legend(lines, labels, fontsize=7, loc="upper right")
    ax1.set_title(f"Throughput and consumer lag, {speed:g}x")
    fig.tight_layout()
    fig.savefig(out / "throughput_lag.png", dpi=110)
    plt.close(fig)
    names.append("throughput_lag.png")

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    procs = sorted({k.split(":", 1)[1] for s in res.samples for k in s.values})
    for name in procs:
        a1.plot([s.t for s in res.samples], [s.values.get(f"cpu:{name}", 0) for s in res.samples], label=name)
        a2.plot([s.t for s in res.samples], [s.values.get(f"rss:{name}", 0) for s in res.samples], label=name)
    a1.set_ylabel("CPU % (one core = 100)")
    a2.set_ylabel("RSS MiB")
    a2.set_xlabel("time since start (s)")
    a1.legend(fontsize=6, ncol=3)
    a1.set_title(f"Resource use per process, {speed:g}x")
    fig.tight_layout()
    fig.savefig(out / "resources.png", dpi=110)
    plt.close(fig)
    names.append("resources.png")
    return names
