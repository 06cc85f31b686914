"""`radstream web`: the review web app (worklists, results, feedback, QC, operations, report)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from radstream.cli.context import settings


def web(
    host: Annotated[Optional[str], typer.Option(help="bind address (default settings.web.host)")] = None,  # noqa: UP045
    port: Annotated[Optional[int], typer.Option(help="port (default settings.web.port)")] = None,  # noqa: UP045
    migrate: Annotated[bool, typer.Option(help="apply database migrations first")] = True,
) -> None:
    """Serve the review web app."""
    import logging

    import uvicorn

    from radstream.web import create_app
    from radstream.web.security import session_key

    s = settings()
    _, made = session_key(s)  # production: refuses a placeholder or empty key (PlaceholderSecret)
    if made is not None:
        typer.echo(f"development: web.session_secret is not set: session cookies are signed with the random key "
                   f"in {made}; set RADSTREAM_WEB__SESSION_SECRET (or its _FILE) in production", err=True)
    if not s.web.cookies_secure(s.environment):
        typer.echo("web.secure_cookies is off: session cookies are sent over plain HTTP too (development only)",
                   err=True)
    if migrate:
        from radstream.db.migrate import migrate as apply_migrations

        apply_migrations(s)
    from radstream.observability import Observability, kafka_ready, postgres_ready

    logging.basicConfig(level=logging.INFO)
    obs = Observability.for_component(s, "web")  # /metrics on its own port, not on the public one
    obs.add_readiness_check("postgres", postgres_ready(s))
    obs.add_readiness_check("kafka", kafka_ready(s))
    obs.start()
    try:
        uvicorn.run(create_app(s, obs=obs), host=host or s.web.host, port=port or s.web.port, log_level="info",
                    proxy_headers=False, server_header=False)
    finally:
        obs.stop()
