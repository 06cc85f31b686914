"""The `radstream` console script: one subcommand per process and per operator task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from radstream import __version__
from radstream.cli import db as _db
from radstream.cli import demo as _demo
from radstream.cli import dev, ingest, topics
from radstream.cli import infer as _infer
from radstream.cli import models as _models
from radstream.cli import ops as _ops
from radstream.cli import report as _report
from radstream.cli import sink as _sink
from radstream.cli import stream as _stream
from radstream.cli import study as _study
from radstream.cli import synth as _synth
from radstream.cli import triton as _triton
from radstream.cli import users as _users
from radstream.cli import web as _web
from radstream.cli.context import set_config

app = typer.Typer(
    name="radstream",
    help="Event-driven ML on medical images: DICOM in, Kafka in the middle, Triton models, clinician review.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(topics.app, name="topics")
ingest.register(app)
app.add_typer(_db.app, name="db")
app.add_typer(_sink.app, name="sink")
app.command("report")(_report.report)
app.command("web")(_web.web)
app.add_typer(_users.app, name="users")
app.add_typer(_study.app, name="study")
app.command("infer")(_infer.infer)
app.command("synth")(_synth.synth)
app.add_typer(_triton.app, name="triton")
app.add_typer(_models.app, name="models")
_ops.register(app, topics.app)
_stream.register(app)
app.command("demo")(_demo.demo)
app.command("bench")(__import__("radstream.cli.bench", fromlist=["bench"]).bench)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"radstream {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional at runtime on some versions
        typer.Option("--config", "-c", help="YAML/JSON config file (also RADSTREAM_CONFIG)", exists=True),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    set_config(config)


@app.command("config")
def show_config() -> None:
    """Print the effective settings as JSON, secrets masked."""
    import json

    from radstream.cli.context import settings

    typer.echo(json.dumps(settings().redacted(), indent=2, default=str))


def main() -> None:
    from radstream.secrets import SecretError

    try:
        app()
    except SecretError as exc:  # a process refusing to start for want of a secret: the reason, no traceback
        typer.echo(f"radstream: {exc}", err=True)
        raise SystemExit(2) from None
