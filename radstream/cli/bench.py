"""`radstream bench`: load test on a private stack (free ports), report to reports/bench/<timestamp>/."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer


def _shape3(text: str) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in text.lower().split("x"))
    return (a, b, c)


def _shape2(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.lower().split("x"))
    return (a, b)


def bench(
    speed: float = typer.Option(1.0, help="replay speed: 1, 10, 100 (divides every interval and stream time)"),
    window: float = typer.Option(180.0, help="wall-clock seconds during which exams start"),
    kinds: str = typer.Option("brain_mr,liver_ct,pelvis_dx", help="exam kinds to send"),
    mr_scanners: int = typer.Option(2), ct_scanners: int = typer.Option(1), dx_rooms: int = typer.Option(2),
    mr_shape: str = typer.Option("32x128x128", help="MR slices x rows x columns"),
    ct_shape: str = typer.Option("40x128x128", help="CT slices x rows x columns"),
    dx_size: str = typer.Option("512x512", help="radiograph rows x columns (paper: 1600x1600, ~5 MB)"),
    dx_images: int = typer.Option(5, help="images per radiograph exam"),
    series_quiet: float = typer.Option(3.0, help="aggregator series quiet period (s)"),
    patient_quiet: float = typer.Option(4.0, help="aggregator patient quiet period (s)"),
    drain: float = typer.Option(300.0, help="seconds to wait for the last results"),
    home: Annotated[str, typer.Option(help="working folder (stack data, synthetic cache)")] = "var/bench",
    out: Annotated[str, typer.Option(help="report folder (default reports/bench/<timestamp>-<speed>x)")] = "",
    keep: bool = typer.Option(False, help="leave the stack running"),
) -> None:
    """Replay a compressed clinical day against a private stack and write a Markdown + PNG report."""
    from radstream.bench.run import run_bench
    from radstream.bench.stack import StackConfig
    from radstream.bench.workload import DayPlan

    plan = DayPlan(window_s=window, speed=speed, mr_scanners=mr_scanners, ct_scanners=ct_scanners,
                   dx_rooms=dx_rooms, mr_shape=_shape3(mr_shape), ct_shape=_shape3(ct_shape),
                   dx_size=_shape2(dx_size), dx_images=dx_images, kinds=tuple(k.strip() for k in kinds.split(",")))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path("reports/bench") / f"{stamp}-{speed:g}x"
    cfg = StackConfig(series_quiet_s=series_quiet, patient_quiet_s=patient_quiet)
    run_home = Path(home) / f"{stamp}-{speed:g}x"
    outcome = run_bench(plan, cfg, run_home, out_dir, typer.echo, drain_s=drain, keep=keep)
    typer.echo((out_dir / "report.md").read_text())
    raise typer.Exit(0 if outcome.missing_results == 0 else 1)
