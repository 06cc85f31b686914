"""`radstream models import-bundle`: a MONAI bundle as a Triton model folder and a pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Models from elsewhere: MONAI bundles as Triton model folders and pipeline files.",
                  no_args_is_help=True)


@app.command("import-bundle")
def import_bundle(
    path: Annotated[Path, typer.Argument(help="the bundle folder (configs/metadata.json, configs/inference.json, "
                                              "models/model.onnx)")],
    out_repository: Annotated[Optional[Path], typer.Option(  # noqa: UP045 - typer needs Optional at runtime
        "--out-repository", help="Triton model repository (default settings.triton.model_repository, else "
                                 "~/.cache/radstream/triton: third-party weights stay out of docker/triton)")] = None,
    pipelines_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--pipelines-dir", help="where the pipeline file goes (default the pipelines_dir setting)")] = None,
    name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--name", help="model and pipeline name (default the bundle's metadata name)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing model folder and pipeline file")] = False,
) -> None:
    """Import a MONAI bundle: ``<repo>/<name>/1/model.onnx`` + ``config.pbtxt`` and ``<pipelines>/<name>.yaml``
    (enabled: false). What cannot be mapped is refused, naming the file and key, and nothing is written."""
    from radstream.cli.context import settings
    from radstream.models.build import DEFAULT_REPOSITORY
    from radstream.models.bundle import BundleError
    from radstream.models.bundle import import_bundle as run
    from radstream.models.deepbet import DEFAULT_CACHE

    s = settings()
    repo = out_repository or s.triton.model_repository or DEFAULT_CACHE.parent / "triton"
    if repo.resolve() == DEFAULT_REPOSITORY.resolve():
        raise typer.BadParameter("a bundle's weights are not written into docker/triton (it is committed)")
    try:
        done = run(path, repo, pipelines_dir or s.pipelines_folder, name=name, force=force)
    except BundleError as exc:
        typer.echo(f"radstream models import-bundle: refused: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model    {done.model_dir}")
    typer.echo(f"pipeline {done.pipeline_file} (enabled: false)")
    typer.echo(f"operators: {' -> '.join(done.operators)}")
