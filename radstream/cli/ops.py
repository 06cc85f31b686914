"""Operator commands: `radstream status`, `radstream topics scale` (replay and compare join later)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from radstream.cli.context import settings


def status(
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="only these consumer groups")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    all_topics: Annotated[bool, typer.Option("--all-topics", help="also topics outside this prefix")] = False,
) -> None:
    """Consumer groups: state, members and lag per partition."""
    from radstream.ops.status import group_status

    groups = group_status(settings(), group or None, all_topics=all_topics)
    if as_json:
        typer.echo(json.dumps([
            {"group": g.group_id, "state": g.state, "total_lag": g.total_lag,
             "members": [{"client_id": m.client_id, "host": m.host, "partitions": m.partitions} for m in g.members],
             "partitions": [{"topic": p.topic, "partition": p.partition, "committed": p.committed, "end": p.end,
                             "lag": p.lag, "member": p.member} for p in g.partitions]}
            for g in groups], indent=2))
        return
    if not groups:
        typer.echo("no consumer groups on radstream topics")
    for g in groups:
        typer.echo(f"{g.group_id}  state={g.state}  members={len(g.members)}  lag={g.total_lag}")
        for m in g.members:
            parts = ", ".join(f"{t.rsplit('.', 1)[-1]}[{p}]" for t, p in m.partitions) or "-"
            typer.echo(f"  member {m.client_id} {m.host}: {parts}")
        for p in g.partitions:
            committed = "-" if p.committed is None else str(p.committed)
            typer.echo(f"  {p.topic:<44} {p.partition:>3}  committed={committed:<8} end={p.end:<8} "
                       f"lag={p.lag:<6} {p.member or ''}")


def scale(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="pipeline whose requests topic grows")],
    partitions: Annotated[int, typer.Option("--partitions", "-n", min=1, help="new partition count")],
) -> None:
    """Raise the partitions of a pipeline's requests topic (the most workers of its group that share work)."""
    from radstream.ops.scale import ScaleError, scale_pipeline

    try:
        r = scale_pipeline(settings(), pipeline, partitions)
    except ScaleError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    verb = "unchanged" if r.before == r.after else "scaled"
    typer.echo(f"{r.topic}: {verb} {r.before} -> {r.after} partitions; run up to {r.after} workers of the pipeline")


def register(app: typer.Typer, topics_app: typer.Typer) -> None:
    app.command("status")(status)
    topics_app.command("scale")(scale)
