"""Sessions, roles and CSRF tokens.

The session is Starlette's signed cookie (itsdangerous, key settings.web.session_secret). It
holds the user name, a per-session CSRF token and when each result page was opened (for the
review time); the user's role and enabled flag are read from the database on every request,
so disabling an account takes effect at once.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request

from radstream.web.users import User


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
