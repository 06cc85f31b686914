"""Accounts of the review app (table ``users``): argon2id password hashes, roles, disabling."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from radstream.web.passwords import PasswordPolicy, PasswordRejected
from radstream.web.sessions import revoke_user

ROLES = ("reader", "qc", "admin")
# marker stored instead of a hash for accounts that sign in through LDAP only
LDAP_ONLY = "!ldap"
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_hasher = PasswordHasher()
# a hash to verify against when the user does not exist, so timing does not reveal accounts
_DUMMY = _hasher.hash("radstream-dummy-password")


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    display_name: str | None
    disabled: bool
    ldap_only: bool
    created_at: datetime | None = None
    last_login_at: datetime | None = None


class UserError(ValueError):
    """A user could not be added or changed (bad name, role, or duplicate)."""


def check_username(username: str) -> str:
    if not _NAME.match(username):
        raise UserError("user names are 1-64 letters, digits, '.', '_', '@' or '-'")
    return username


def hash_password(password: str, *, username: str | None = None, policy: PasswordPolicy | None = None) -> str:
    """The argon2id hash of a password that satisfies ``policy`` (default: the shipped policy)."""
    try:
        (policy or PasswordPolicy()).check(password, username)
    except PasswordRejected as exc:
        raise UserError(str(exc)) from exc
    return _hasher.hash(password)


def _row(r: tuple[Any, ...]) -> User:
    return User(username=r[0], role=r[1], display_name=r[2], disabled=bool(r[3]), ldap_only=r[4] == LDAP_ONLY,
                created_at=r[5], last_login_at=r[6])


_COLS = "username, role, display_name, disabled, password_hash, created_at, last_login_at"


def add_user(conn: psycopg.Connection[Any], username: str, role: str, password: str | None,
             display_name: str | None = None, *, policy: PasswordPolicy | None = None) -> User:
    """Create an account; ``password=None`` makes an LDAP-only account."""
    check_username(username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    pw_hash = LDAP_ONLY if password is None else hash_password(password, username=username, policy=policy)
    try:
        row = conn.execute(
            f"INSERT INTO users (username, password_hash, role, display_name) VALUES (%s, %s, %s, %s) "
            f"RETURNING {_COLS}",
            (username, pw_hash, role, display_name),
        ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise UserError(f"user {username!r} exists already") from exc
    assert row is not None
    return _row(row)


def list_users(conn: psycopg.Connection[Any]) -> list[User]:
    return [_row(r) for r in conn.execute(f"SELECT {_COLS} FROM users ORDER BY username").fetchall()]


def get_user(conn: psycopg.Connection[Any], username: str) -> User | None:
    row = conn.execute(f"SELECT {_COLS} FROM users WHERE username = %s", (username,)).fetchone()
    return _row(row) if row else None


def set_disabled(conn: psycopg.Connection[Any], username: str, disabled: bool = True) -> bool:
    """Disable (or enable) an account; disabling ends its sessions at once."""
    with conn.transaction():
        cur = conn.execute("UPDATE users SET disabled = %s WHERE username = %s", (disabled, username))
        found = cur.rowcount == 1
        if found and disabled:
            revoke_user(conn, username)
    return found


def set_password(conn: psycopg.Connection[Any], username: str, password: str, *,
                 policy: PasswordPolicy | None = None) -> bool:
    """A new password (checked against ``policy``); every session of the account ends."""
    pw_hash = hash_password(password, username=username, policy=policy)
    with conn.transaction():
        cur = conn.execute("UPDATE users SET password_hash = %s WHERE username = %s", (pw_hash, username))
        found = cur.rowcount == 1
        if found:
            revoke_user(conn, username)
    return found


def verify_local(conn: psycopg.Connection[Any], username: str, password: str) -> User | None:
    """The enabled local account with this password, else None (constant work either way)."""
    row = conn.execute(f"SELECT {_COLS} FROM users WHERE username = %s", (username,)).fetchone()
    stored = str(row[4]) if row else _DUMMY
    if stored == LDAP_ONLY:
        stored = _DUMMY
    ok: bool
    try:
        ok = _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None or str(row[4]) == LDAP_ONLY:
        return None
    user = _row(row)
    if user.disabled:
        return None
    if _hasher.check_needs_rehash(stored):
        conn.execute("UPDATE users SET password_hash = %s WHERE username = %s", (_hasher.hash(password), username))
    return user


def mark_login(conn: psycopg.Connection[Any], username: str) -> None:
    conn.execute("UPDATE users SET last_login_at = now() WHERE username = %s", (username,))
