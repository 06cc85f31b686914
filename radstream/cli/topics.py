"""`radstream topics create|describe`."""

from __future__ import annotations

import typer

from radstream.cli.context import settings

app = typer.Typer(help="Create and describe radstream's Kafka topics.", no_args_is_help=True)


@app.command()
def create() -> None:
    """Create every topic of the architecture (idempotent)."""
    from radstream.kafka.topics import create_topics

    created = create_topics(settings())
    typer.echo(f"created {len(created)} topic(s)" + (": " + ", ".join(created) if created else ""))


@app.command()
def describe() -> None:
    """List radstream's topics with partitions, replication and retention."""
    from radstream.kafka.topics import describe_topics

    for t in describe_topics(settings()):
        cfg = " ".join(f"{k}={v}" for k, v in sorted(t.config.items()))
        typer.echo(f"{t.name:<40} partitions={t.partitions:<3} replication={t.replication} {cfg}")
