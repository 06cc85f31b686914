"""`radstream sink results|feedback`: consume a topic into PostgreSQL."""

from __future__ import annotations

import logging
import signal
from typing import Annotated

import typer

from radstream.cli.context import settings

app = typer.Typer(help="Sinks: results and feedback topics into PostgreSQL.", no_args_is_help=True)

MigrateOpt = Annotated[bool, typer.Option("--migrate/--no-migrate", help="apply database migrations first")]
IdleOpt = Annotated[
    float | None, typer.Option("--exit-when-idle", help="stop after this many seconds without messages")
]


def _run(name: str, migrate: bool, exit_when_idle: float | None) -> None:
    from radstream.consumers.sinks import SinkRunner, feedback_spec, results_spec
    from radstream.db.migrate import migrate as apply_migrations
    from radstream.observability import Observability, kafka_ready, postgres_ready

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings()
    if migrate:
        apply_migrations(s)
    spec = results_spec(s) if name == "results" else feedback_spec(s)
    runner = SinkRunner(s, spec)
    runner.obs = Observability.for_component(s, f"sink_{name}")
    runner.obs.add_readiness_check("kafka", kafka_ready(s))
    runner.obs.add_readiness_check("postgres", postgres_ready(s))
    runner.obs.start()

    def _stop(signum: int, _frame: object) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stats = runner.run(max_idle_s=exit_when_idle)
    finally:
        runner.obs.stop()
    typer.echo(f"sink {name}: {stats.events} events, {stats.rows} rows, {stats.batches} batches, "
               f"{stats.dead_lettered} dead-lettered, {stats.outages} database outages")


@app.command()
def results(migrate: MigrateOpt = True, exit_when_idle: IdleOpt = None) -> None:
    """Inference requests and results (InferenceRequested/Completed/Failed) into PostgreSQL."""
    _run("results", migrate, exit_when_idle)


@app.command()
def feedback(migrate: MigrateOpt = True, exit_when_idle: IdleOpt = None) -> None:
    """Reviews and QC decisions (ReviewSubmitted, QcDecided) into PostgreSQL."""
    _run("feedback", migrate, exit_when_idle)
