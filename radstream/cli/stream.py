"""`radstream aggregate`, `radstream dispatch` and `radstream rules test` (logic in radstream.stream_apps)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from radstream.cli.context import settings

rules_app = typer.Typer(help="Pipeline routing and series selection rules.", no_args_is_help=True)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def aggregate(log_level: Annotated[str, typer.Option(help="log level")] = "info") -> None:
    """Group instances into series and studies; emit SeriesCompleted/StudyCompleted."""
    _logging(log_level)
    from radstream.stream_apps.aggregator import run

    run(settings())


def dispatch(log_level: Annotated[str, typer.Option(help="log level")] = "info") -> None:
    """Route completed series/studies to pipelines; emit InferenceRequested."""
    _logging(log_level)
    from radstream.stream_apps.dispatcher import run

    run(settings())


@rules_app.command("test")
def rules_test(
    pipeline: Annotated[str, typer.Argument(help="pipeline name or path of a pipeline file")],
    path: Annotated[Path, typer.Argument(help="folder (or file) of DICOM instances of one study", exists=True)],
    called_ae: Annotated[str | None, typer.Option(help="called AE title the study would arrive on")] = None,
    calling_ae: Annotated[str | None, typer.Option(help="calling AE title of the sender")] = None,
) -> None:
    """Say which series of a study on disk the pipeline selects, and why."""
    from radstream.stream_apps.rules_tester import explain

    code, text = explain(settings(), pipeline, path, called_ae, calling_ae)
    typer.echo(text)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("aggregate")(aggregate)
    app.command("dispatch")(dispatch)
    app.add_typer(rules_app, name="rules")
