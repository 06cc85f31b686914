"""`radstream study sources|report|human-seg`: the blinded multi-reader study, for its lead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from radstream.cli.context import settings

app = typer.Typer(help="The blinded multi-reader study: segmentation sources, the unblinded report.",
                  no_args_is_help=True)
sources = typer.Typer(help="Segmentation sources (expert, novice, ...): known only to the study lead.",
                      no_args_is_help=True)
app.add_typer(sources, name="sources")


@sources.command("add")
def sources_add(
    name: str,
    ae: Annotated[Optional[str], typer.Option("--ae", help="calling AE title its segmentation tool sends from")] = None,  # noqa: UP045
    kind: Annotated[str, typer.Option(
        help="human, model, or reference (a validation set's ground truth: compared with results by "
             "`radstream report`, never shown to readers)")] = "human",
    description: Annotated[Optional[str], typer.Option(help="free text")] = None,  # noqa: UP045
) -> None:
    """Register a source; SEGs sent by C-STORE from its AE title are registered as its segmentations."""
    from radstream.db.connect import connect
    from radstream.db.segmentations import add_source

    with connect(settings(), autocommit=True) as conn:
        try:
            add_source(conn, name, kind=kind, calling_ae_title=ae, description=description, created_by="cli")
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    typer.echo(f"source {name} added" + (f" (calling AE title {ae})" if ae else ""))


@sources.command("list")
def sources_list() -> None:
    """The registered sources."""
    from radstream.db.connect import connect

    with connect(settings(), autocommit=True) as conn:
        rows = conn.execute("SELECT name, kind, calling_ae_title, description FROM seg_sources "
                            "ORDER BY name").fetchall()
    for name, kind, ae, description in rows:
        typer.echo(f"{name}\t{kind}\t{ae or '-'}\t{description or ''}")


@app.command("report")
def report(
    pipeline: Annotated[str, typer.Option(help="the blinded pipeline")] = "liver",
    as_json: Annotated[bool, typer.Option("--json", help="the whole report as JSON")] = False,
) -> None:
    """The unblinded report: per source ratings, times, volumes; Dice and volume difference per label."""
    from radstream.db.connect import connect
    from radstream.web.blinded import format_study_report, study_report
    from radstream.web.viewer import ImageCache

    s = settings()
    with connect(s, autocommit=True) as conn:
        data = study_report(ImageCache(s), conn, pipeline)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo(format_study_report(data))


@app.command("human-seg")
def human_seg(
    series_dir: Annotated[Path, typer.Argument(help="folder of one synthetic liver CT series", exists=True,
                                               file_okay=False)],
    out: Annotated[Path, typer.Argument(help="the DICOM SEG to write")],
    style: Annotated[str, typer.Option(help="expert or novice")] = "expert",
    reader: Annotated[str, typer.Option(help="content creator name (DICOM PN)")] = "Reader^Synthetic",
) -> None:
    """Make a human-style segmentation of a synthetic liver CT (the stand-in for a segmentation tool)."""
    from radstream.synth.human_seg import human_segmentation

    if style not in ("expert", "novice"):
        typer.echo("error: --style is expert or novice", err=True)
        raise typer.Exit(2)
    path = human_segmentation(series_dir, out, style=style, reader=reader)  # type: ignore[arg-type]
    typer.echo(str(path))
