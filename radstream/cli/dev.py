"""`radstream dev up|down|status`: local infrastructure without Docker."""

from __future__ import annotations

import typer

from radstream.cli.context import settings

app = typer.Typer(help="Local infrastructure (Kafka KRaft, PostgreSQL) without Docker.", no_args_is_help=True)


@app.command()
def up() -> None:
    """Start Kafka and PostgreSQL (idempotent) and create the topics."""
    from radstream.devenv.stack import LocalStack
    from radstream.kafka.topics import create_topics

    stack = LocalStack(settings())
    stack.up()
    create_topics(settings())
    status()


@app.command()
def down() -> None:
    """Stop what `dev up` started (by pid file), nothing else."""
    from radstream.devenv.stack import LocalStack

    stopped = LocalStack(settings()).down()
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status() -> None:
    """Say for each component whether it is up, with its address."""
    from radstream.devenv.stack import LocalStack

    for c in LocalStack(settings()).status():
        state = "up" if c.up else "down"
        owner = f"pid {c.pid}" if c.pid else ("external" if not c.managed else "not started by radstream")
        typer.echo(f"{c.name:<10} {state:<5} {c.address:<22} {owner}")
