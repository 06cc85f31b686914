"""`radstream ingest` (the C-STORE SCP) and `radstream send` (a C-STORE SCU)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from radstream.cli.context import settings
from radstream.settings import Settings


def ingest(
    port: Annotated[int | None, typer.Option(help="DICOM port (default: dicom.port)")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="AE title (default: dicom.ae_title)")] = None,
    no_publish: Annotated[bool, typer.Option("--no-publish", help="benchmarks only: store, publish nothing")] = False,
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
    accept_new_site_secret: Annotated[bool, typer.Option(
        "--accept-new-site-secret",
        help="start although the site secret is not the one the store's data was keyed with (records the new "
             "fingerprint; new patient keys will not match older data)")] = False,
    processes: Annotated[int | None, typer.Option(
        "--processes", min=0,
        help="SCP processes on the one port (SO_REUSEPORT), each with its own outbox; 0 = one per core "
             "(default: ingest.processes, 1)")] = None,
    pool_slot: Annotated[int | None, typer.Option("--pool-slot", min=0, hidden=True,
                                                  help="internal: run as this slot of a pool")] = None,
) -> None:
    """Run the DICOM ingest SCP: C-ECHO and C-STORE, claim check, InstanceReceived events."""
    from radstream.producers.pool import pool_size

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings()
    dicom = s.dicom.model_copy(update={k: v for k, v in (("port", port), ("ae_title", ae_title)) if v is not None})
    update: dict[str, object] = {"dicom": dicom}
    if no_publish:
        update["ingest"] = s.ingest.model_copy(update={"publish": False})
    if accept_new_site_secret:
        update["accept_new_site_secret"] = True
    s = s.model_copy(update=update)
    n = pool_size(processes if processes is not None else s.ingest.processes)
    if pool_slot is not None:
        raise typer.Exit(_pool_slot(s, pool_slot, n))
    if n > 1:
        raise typer.Exit(_pool(s, n, log_level, no_publish))
    _single(s)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _single(s: Settings) -> None:
    """One SCP process (no pool): serves until SIGINT or SIGTERM."""
    from radstream.producers.scp import IngestServer

    server = IngestServer(s)
    stop = _stop_on_signals()
    server.start()
    stop.wait()
    server.stop()


def _pool_slot(s: Settings, slot: int, n: int) -> int:
    """One process of a pool (started by the supervisor)."""
    from radstream.producers.pool import serve_slot

    return serve_slot(s, slot, n, _stop_on_signals())


def _pool(s: Settings, n: int, log_level: str, no_publish: bool) -> int:
    """The pool's supervisor: checks the site secret and the port once, then runs ``n`` slot processes."""
    import os
    import sys

    from radstream.cli import context
    from radstream.producers.pool import PoolSupervisor, reserve_port
    from radstream.secrets import site_secret

    site_secret(s)  # refuse (or record) here once, rather than in every process
    stop = _stop_on_signals()
    try:
        reservation = reserve_port(s.dicom.bind_address, s.dicom.port)
    except OSError as exc:
        typer.echo(f"DICOM port {s.dicom.bind_address}:{s.dicom.port} is not free for the pool: {exc}", err=True)
        return 1
    port = int(reservation.getsockname()[1])
    base = [sys.executable, "-m", "radstream.cli", "ingest", "--processes", str(n), "--port", str(port),
            "--ae-title", s.dicom.ae_title, "--log-level", log_level, *(["--no-publish"] if no_publish else [])]
    env = dict(os.environ)
    if context._config is not None:  # `radstream --config FILE ingest`: the processes read the same file
        env["RADSTREAM_CONFIG"] = str(context._config.resolve())
    logging.getLogger(__name__).info("ingest pool: %d processes on %s:%d", n, s.dicom.bind_address, port)
    try:
        return PoolSupervisor(lambda slot: [*base, "--pool-slot", str(slot)], n,
                              stop_timeout_s=s.ingest.pool_stop_timeout_s, env=env).run(stop)
    finally:
        reservation.close()


def send(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (recursive)", exists=True)],
    host: Annotated[str, typer.Option(help="SCP host")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="SCP port (default: dicom.port)")] = None,
    called_ae: Annotated[str | None, typer.Option("--aec", help="called AE title (default: dicom.ae_title)")] = None,
    calling_ae: Annotated[str, typer.Option("--aet", help="calling AE title")] = "RADSTREAM-SCU",
    associations: Annotated[int, typer.Option("--associations", "-j", min=1, help="parallel associations")] = 1,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Send DICOM files with C-STORE; prints a summary of statuses, exits 1 if any failed."""
    from rich.progress import Progress

    from radstream.producers.scu import SendResult, collect_files, send_paths

    s = settings()
    total = len(collect_files(paths))
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("C-STORE", total=total)

        def advance(_: SendResult) -> None:
            bar.advance(task)

        summary = send_paths(
            paths, host=host, port=port or s.dicom.port, called_ae=called_ae or s.dicom.ae_title,
            calling_ae=calling_ae, associations=associations, on_result=advance,
        )
    for r in summary.results:
        if not r.ok:
            typer.echo(f"FAILED {r.path}: {r.label}", err=True)
    typer.echo(summary.line())
    raise typer.Exit(1 if summary.failed else 0)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("send")(send)
