"""`radstream report --pipeline NAME [--csv PATH]`: validation-study figures from PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from radstream.cli.context import settings


def report(
    pipeline: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer needs Optional at runtime
        typer.Option("--pipeline", "-p", help="pipeline name (repeatable); default: every pipeline with data"),
    ] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="also write the figures as CSV")] = None,  # noqa: UP045
    include_shadow: Annotated[bool, typer.Option("--include-shadow", help="count shadow runs too")] = False,
) -> None:
    """Exams received/processed/failed, turnaround, run time, reviews and agreement per pipeline, and the
    agreement with reference segmentations (Dice, volumes) where a reference source sent some."""
    from radstream.db.connect import connect
    from radstream.report.figures import format_text, pipeline_report, pipelines_in_db, write_csv
    from radstream.report.reference import format_reference, reference_pairs, summarise, write_reference_csv
    from radstream.web.viewer import ImageCache

    s = settings()
    cache = ImageCache(s)
    with connect(s, autocommit=True, application_name="radstream-report") as conn:
        names = list(pipeline or []) or pipelines_in_db(conn)
        reports = [pipeline_report(conn, n, include_shadow=include_shadow) for n in names]
        references = {n: summarise(n, reference_pairs(cache, conn, n, include_shadow=include_shadow))
                      for n in names}
    for r in reports:
        typer.echo(format_text(r))
        if references[r.pipeline]:
            typer.echo(format_reference(references[r.pipeline]))
    if csv_path is not None:
        write_csv(reports, csv_path)
        typer.echo(f"wrote {csv_path}")
        refs = [x for n in names for x in references[n]]
        if refs:
            ref_path = csv_path.with_name(csv_path.stem + "-reference.csv")
            write_reference_csv(refs, ref_path)
            typer.echo(f"wrote {ref_path}")
