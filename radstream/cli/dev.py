"""`radstream dev up|down|status`: local infrastructure without Docker."""

from __future__ import annotations

import typer

from radstream.cli.context import settings

app = typer.Typer(
    help="Local infrastructure (Kafka KRaft, PostgreSQL, Triton on the CPU) without Docker.", no_args_is_help=True
)


@app.command()
def up(
    triton: bool = typer.Option(True, help="also start the Triton server (CPU) with the reference models"),
    all_services: bool = typer.Option(
        False, "--all", help="also start every radstream process (ingest, aggregate, dispatch, infer, sinks, web)"
    ),
    brokers: int | None = typer.Option(
        None, min=1, max=5, help="Kafka brokers: 3 runs a KRaft cluster (brokers on the bootstrap port, +2, +4) "
                                 "and replicates every topic 3 times with min ISR 2; default: as last started, or 1"),
) -> None:
    """Start Kafka, PostgreSQL and Triton (idempotent), create the topics and the database schema."""
    from radstream.db.migrate import migrate
    from radstream.devenv.services import DEVELOPMENT_ENV, radstream_services
    from radstream.devenv.stack import LocalStack
    from radstream.kafka.topics import create_topics

    stack = LocalStack(settings(), brokers=brokers)
    stack.up(triton=triton)
    create_topics(stack.settings)
    migrate(stack.settings)
    if all_services:  # a development stack: random secrets under <home>/secrets/ replace the placeholders
        dev = stack.settings.model_copy(update={"environment": "development"})
        stack.services.start(radstream_services(dev, {**DEVELOPMENT_ENV, **stack.kafka_env()}))
    status()
    if stack.brokers > 1:
        typer.echo("the cluster's clients need (radstream processes you start yourself):")
        for key, value in stack.kafka_env().items():
            typer.echo(f"  export {key}={value}")


@app.command()
def down() -> None:
    """Stop what `dev up` and `demo` started (by pid file), nothing else."""
    from radstream.devenv.stack import LocalStack

    stopped = LocalStack(settings()).down()
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status() -> None:
    """Say for each component whether it is up, with its address."""
    from radstream.devenv.stack import LocalStack

    for c in LocalStack(settings()).status():
        state = "up" if c.up else "down"
        if not c.address:  # a radstream process
            typer.echo(f"{c.name:<16} running pid {c.pid}")
            continue
        owner = f"pid {c.pid}" if c.pid else ("external" if not c.managed else "not started by radstream")
        typer.echo(f"{c.name:<16} {state:<5} {c.address:<22} {owner}")
