"""`radstream users add|list|disable|enable` on the real database, and sign-in with the accounts it makes."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from radstream.cli import context
from radstream.cli.main import app
from radstream.db.migrate import migrate
from radstream.settings import Settings
from radstream.web import create_app

pytestmark = pytest.mark.postgres


def _env(s: Settings) -> dict[str, str]:
    p = s.postgres
    return {"RADSTREAM_POSTGRES__HOST": p.host, "RADSTREAM_POSTGRES__PORT": str(p.port),
            "RADSTREAM_POSTGRES__USER": p.user, "RADSTREAM_POSTGRES__PASSWORD": p.password.get_secret_value(),
            "RADSTREAM_POSTGRES__DATABASE": p.database}


def test_users_cli(pg_settings: Settings) -> None:
    migrate(pg_settings)
    runner = CliRunner()
    env = _env(pg_settings)
    context.set_config(None)
    r = runner.invoke(app, ["users", "add", "dr.who", "--role", "admin", "--name", "Dr Who", "--password-stdin"],
                      input="s3cret-enough\n", env=env)
    assert r.exit_code == 0, r.output
    assert "added dr.who (admin)" in r.output
    context.set_config(None)
    r = runner.invoke(app, ["users", "add", "dr.who", "--role", "admin", "--password-stdin"],
                      input="another fine passphrase\n", env=env)
    assert r.exit_code == 1 and "exists already" in r.output
    context.set_config(None)
    r = runner.invoke(app, ["users", "add", "ldapuser", "--role", "reader", "--ldap"], env=env)
    assert r.exit_code == 0, r.output
    context.set_config(None)
    r = runner.invoke(app, ["users", "add", "bad", "--role", "root", "--password-stdin"], input="x" * 10 + "\n",
                      env=env)
    assert r.exit_code == 1
    context.set_config(None)
    r = runner.invoke(app, ["users", "list"], env=env)
    assert r.exit_code == 0
    assert re.search(r"dr\.who\s+admin\s+password\s+active", r.output)
    assert re.search(r"ldapuser\s+reader\s+ldap\s+active", r.output)
    assert "argon2" not in r.output

    def sign_in(user: str, password: str) -> int:
        with TestClient(create_app(pg_settings), base_url="http://127.0.0.1") as client:
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
            return client.post("/login", data={"username": user, "password": password, "csrf_token": token},
                               follow_redirects=False).status_code

    assert sign_in("dr.who", "s3cret-enough") == 303
    assert sign_in("ldapuser", "anything-at-all") == 401  # LDAP is off: an LDAP-only account cannot sign in
    context.set_config(None)
    r = runner.invoke(app, ["users", "disable", "dr.who"], env=env)
    assert r.exit_code == 0
    assert sign_in("dr.who", "s3cret-enough") == 401
    context.set_config(None)
    assert runner.invoke(app, ["users", "enable", "dr.who"], env=env).exit_code == 0
    assert sign_in("dr.who", "s3cret-enough") == 303
    context.set_config(None)
    assert runner.invoke(app, ["users", "disable", "nobody"], env=env).exit_code == 1
    context.set_config(None)
