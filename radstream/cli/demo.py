"""`radstream demo`: the main job end to end."""

from __future__ import annotations

import typer

from radstream.cli.context import settings


def demo(
    stop: bool = typer.Option(False, "--stop", help="stop everything when done (default: leave it running)"),
    brain_patients: int = typer.Option(2, help="brain MR patients (each with several timepoints)"),
    timepoints: int = typer.Option(3, help="brain MR exams per patient"),
    liver_patients: int = typer.Option(1, help="abdominal CT patients"),
    hip_patients: int = typer.Option(2, help="pelvis radiograph patients"),
    timeout: float = typer.Option(900.0, help="seconds to wait for all results"),
) -> None:
    """Bring everything up, send synthetic exams for the three pipelines, print the results."""
    from radstream.demo import DemoPlan, run_demo

    plan = DemoPlan(brain_patients=brain_patients, brain_timepoints=timepoints, liver_patients=liver_patients,
                    hip_patients=hip_patients, timeout_s=timeout)
    ok = run_demo(settings(), plan, typer.echo, stop=stop)
    raise typer.Exit(0 if ok else 1)
