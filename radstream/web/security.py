"""Sessions, roles and CSRF tokens.

The session is Starlette's signed cookie (itsdangerous, key :func:`session_key`). It
holds the user name, a per-session CSRF token and when each result page was opened (for the
review time); the user's role and enabled flag are read from the database on every request,
so disabling an account takes effect at once.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request

from radstream.settings import DEFAULT_SESSION_SECRET, Settings
from radstream.web.users import User


def session_key(settings: Settings) -> tuple[str, Path | None]:
    """The key that signs session cookies, and the file it came from when radstream made it.

    A key set in the settings is used as given. The shipped placeholder (or nothing) is never
    used as a key: it is public, and a cookie signed with it would open any account. Instead a
    random key is made once and kept in ``<home>/secrets/web_session_secret`` (mode 0600), so
    sessions survive restarts of one installation while no two installations share a key.
    """
    given = settings.web.session_secret.get_secret_value()
    if given and given != DEFAULT_SESSION_SECRET:
        return given, None
    path = Path(settings.home) / "secrets" / "web_session_secret"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(40):  # another process may have just created it and not yet written it
            key = path.read_text(encoding="utf-8").strip()
            if len(key) >= 32:
                return key, path
            time.sleep(0.05)
        raise RuntimeError(
            f"{path} holds no usable session key: remove it or set RADSTREAM_WEB__SESSION_SECRET") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key, path


class NotSignedIn(Exception):
    """Raised by ``require``: pages answer with a redirect to the sign-in page, APIs with 401."""


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> Any:
    """Read the form and refuse it (403) unless it carries this session's CSRF token."""
    form = await request.form()
    sent = form.get("csrf_token")
    want = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(want, str) or not hmac.compare_digest(sent, want):
        raise HTTPException(403, "missing or invalid CSRF token")
    return form


def current_user(request: Request) -> User | None:
    user = request.scope.get("radstream.user")
    return user if isinstance(user, User) else None


def require(request: Request, *roles: str) -> User:
    user = current_user(request)
    if user is None:
        raise NotSignedIn
    if roles and user.role not in roles:
        raise HTTPException(403, "your role may not open this page")
    return user


def safe_next(target: str | None) -> str:
    """Only a local absolute path may be a redirect target after sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_url(request: Request) -> str:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(path, safe="")
