"""`radstream triton serve|build`: the reference models behind a real Triton server (CPU, or a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from radstream.cli.context import settings

app = typer.Typer(help="Triton Inference Server with the reference models (pytriton; CPU, or GPU with PyTorch).",
                  no_args_is_help=True)


@app.command()
def serve() -> None:
    """Run Triton in the foreground on settings.triton ports, serving the reference models on
    settings.triton.device (cpu: onnxruntime; cuda[:N]: PyTorch on that GPU)."""
    from radstream.models.build import DEFAULT_REPOSITORY
    from radstream.models.serve import ServeOptions
    from radstream.models.serve import serve as run

    t = settings().triton
    run(ServeOptions(repository=t.model_repository or DEFAULT_REPOSITORY, http_port=t.http_port,
                     grpc_port=t.grpc_port, metrics_port=t.metrics_port, wait_ms=t.wait_model_ms,
                     host="127.0.0.1" if t.host in ("localhost", "127.0.0.1") else "0.0.0.0", device=t.device))


@app.command()
def build(
    out: Annotated[Optional[Path], typer.Option(help="model repository folder (default docker/triton)")] = None,  # noqa: UP045
    deepbet: Annotated[bool, typer.Option(
        help="also deepbet's two brain-extraction networks (ONNX rebuilt from its PyPI wheel, downloaded once "
             "into ~/.cache/radstream/deepbet); OUT then defaults to ~/.cache/radstream/triton, never docker/triton "
             "(third-party weights stay out of the repository)")] = False,
) -> None:
    """(Re)build the reference ONNX models and their config.pbtxt (a Triton model repository)."""
    from radstream.models.build import DEFAULT_REPOSITORY, build_repository

    if deepbet:
        from radstream.models import deepbet as db

        target = out or db.DEFAULT_CACHE.parent / "triton"
        if target.resolve() == DEFAULT_REPOSITORY.resolve():
            raise typer.BadParameter("deepbet's weights are not written into docker/triton (it is committed)")
        for p in [*build_repository(target), *db.build_repository(target)]:
            typer.echo(str(p))
        return
    for p in build_repository(out or DEFAULT_REPOSITORY):
        typer.echo(str(p))
