"""Sessions, roles and CSRF tokens.

The session lives in PostgreSQL (:mod:`radstream.web.sessions`); the cookie carries its id,
signed with the key of :func:`session_key`. It holds the user name, a per-session CSRF token and
when each result page was opened (for the review time); the user's role and enabled flag are
read from the database on every request, so disabling an account takes effect at once.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request

from radstream.secrets import session_secret
from radstream.settings import Settings
from radstream.web.sessions import state_of
from radstream.web.users import User


def session_key(settings: Settings) -> tuple[str, Path | None]:
    """The key that signs session cookies, and the file it came from when radstream made it.

    A key set in the settings is used as given. The shipped placeholder (or nothing) is never
    used as a key: it is public, and a cookie signed with it would open any account. In
    production the app refuses to start with it (:class:`radstream.secrets.PlaceholderSecret`);
    in development a random key is made once and kept in ``<home>/secrets/web_session_secret``
    (mode 0600), so sessions survive restarts of one installation while no two share a key.
    """
    resolved = session_secret(settings)
    return resolved.value, resolved.generated


class NotSignedIn(Exception):
    """Raised by ``require``: pages answer with a redirect to the sign-in page, APIs with 401."""


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        state = state_of(request.scope)
        # before sign-in the token is derived from the signed session id (nothing is stored)
        token = state.anonymous_csrf if state is not None else secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> Any:
    """Read the form and refuse it (403) unless it carries this session's CSRF token.

    The body is bounded before this runs (radstream.web.limits), and a request that is not signed in
    (other than sign-in itself) or comes cross-site never gets here (radstream.web.sessions).
    """
    if not isinstance(request.session.get("csrf"), str):  # no session a token could belong to: don't parse
        raise HTTPException(403, "missing or invalid CSRF token")
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
