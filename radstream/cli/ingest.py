"""`radstream ingest` (the C-STORE SCP) and `radstream send` (a C-STORE SCU)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from radstream.cli.context import settings


def ingest(
    port: Annotated[int | None, typer.Option(help="DICOM port (default: dicom.port)")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="AE title (default: dicom.ae_title)")] = None,
    no_publish: Annotated[bool, typer.Option("--no-publish", help="benchmarks only: store, publish nothing")] = False,
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
    accept_new_site_secret: Annotated[bool, typer.Option(
        "--accept-new-site-secret",
        help="start although the site secret is not the one the store's data was keyed with (records the new "
             "fingerprint; new patient keys will not match older data)")] = False,
) -> None:
    """Run the DICOM ingest SCP: C-ECHO and C-STORE, claim check, InstanceReceived events."""
    from radstream.producers.scp import IngestServer

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings()
    dicom = s.dicom.model_copy(update={k: v for k, v in (("port", port), ("ae_title", ae_title)) if v is not None})
    update: dict[str, object] = {"dicom": dicom}
    if no_publish:
        update["ingest"] = s.ingest.model_copy(update={"publish": False})
    if accept_new_site_secret:
        update["accept_new_site_secret"] = True
    server = IngestServer(s.model_copy(update=update))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop()


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
