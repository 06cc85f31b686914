"""`radstream users add|list|disable|enable|passwd`: accounts of the review web app."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from radstream.cli.context import settings

app = typer.Typer(help="Review web app accounts (roles: reader, qc, admin).", no_args_is_help=True)


def _password(ldap: bool) -> str | None:
    if ldap:
        return None
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@app.command()
def add(
    username: str,
    role: Annotated[str, typer.Option(help="reader, qc or admin")] = "reader",
    name: Annotated[Optional[str], typer.Option(help="display name")] = None,  # noqa: UP045
    ldap: Annotated[bool, typer.Option("--ldap", help="sign in through LDAP only (no local password)")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Add an account (asks for the password unless --ldap or --password-stdin).

    The password must satisfy the policy: web.password_min_length characters, not the user name, not a
    common password (the shipped list and web.password_deny_file).
    """
    import sys

    from radstream.db.connect import connect
    from radstream.web.passwords import PasswordPolicy
    from radstream.web.users import UserError, add_user

    pw = sys.stdin.readline().rstrip("\n") if password_stdin and not ldap else _password(ldap)
    with connect(settings(), autocommit=True) as conn:
        try:
            user = add_user(conn, username, role, pw, name, policy=PasswordPolicy.from_settings(settings()))
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"added {user.username} ({user.role}{', LDAP' if user.ldap_only else ''})")


@app.command("list")
def list_() -> None:
    """List the accounts."""
    from radstream.db.connect import connect
    from radstream.web.users import list_users

    with connect(settings(), autocommit=True) as conn:
        users = list_users(conn)
    for u in users:
        state = "disabled" if u.disabled else "active"
        kind = "ldap" if u.ldap_only else "password"
        last = u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "-"
        typer.echo(f"{u.username:<24} {u.role:<7} {kind:<9} {state:<9} last sign-in {last}")


def _set(username: str, disabled: bool) -> None:
    from radstream.db.connect import connect
    from radstream.web.users import set_disabled

    with connect(settings(), autocommit=True) as conn:
        if not set_disabled(conn, username, disabled):
            typer.echo(f"error: no user {username!r}", err=True)
            raise typer.Exit(1)
    typer.echo(f"{'disabled' if disabled else 'enabled'} {username}")


@app.command()
def disable(username: str) -> None:
    """Disable an account (its sessions end at once)."""
    _set(username, True)


@app.command()
def enable(username: str) -> None:
    """Enable a disabled account."""
    _set(username, False)


@app.command()
def passwd(
    username: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Set a new password (same policy as `users add`); every session of the account ends."""
    import sys

    from radstream.db.connect import connect
    from radstream.web.passwords import PasswordPolicy
    from radstream.web.users import UserError, set_password

    pw = sys.stdin.readline().rstrip("\n") if password_stdin else _password(False)
    assert pw is not None
    with connect(settings(), autocommit=True) as conn:
        try:
            ok = set_password(conn, username, pw, policy=PasswordPolicy.from_settings(settings()))
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    if not ok:
        typer.echo(f"error: no user {username!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"password set for {username} (its sessions ended)")
