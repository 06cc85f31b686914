"""`radstream db migrate|status`: the PostgreSQL schema."""

from __future__ import annotations

import typer

from radstream.cli.context import settings

app = typer.Typer(help="PostgreSQL schema: versioned SQL migrations.", no_args_is_help=True)


@app.command()
def migrate() -> None:
    """Apply the migrations not yet applied (safe to run again, and concurrently)."""
    from radstream.db.migrate import migrate as apply_migrations

    done = apply_migrations(settings())
    if done:
        for m in done:
            typer.echo(f"applied {m.version:04d}_{m.name}")
    else:
        typer.echo("database is up to date")


@app.command()
def status() -> None:
    """List the shipped migrations and whether each is applied."""
    import psycopg

    from radstream.db.connect import connect
    from radstream.db.migrate import applied, available

    with connect(settings(), autocommit=True) as conn:
        try:
            have = applied(conn)
        except psycopg.errors.UndefinedTable:
            have = {}
    for m in available():
        state = "applied" if m.version in have else "pending"
        typer.echo(f"{m.version:04d}_{m.name}: {state}")
