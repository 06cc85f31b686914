"""What every request handler shares: settings, templates, database connections, the event producer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from radstream.db.connect import connect
from radstream.events.models import Event
from radstream.kafka.producer import EventProducer
from radstream.settings import Settings
from radstream.web.images import LRU
from radstream.web.ops import KafkaOps
from radstream.web.security import NotSignedIn, csrf_token, session_key
from radstream.web.sessions import SessionStore
from radstream.web.users import User, get_user

NAV = {
    "reader": [("Worklist", "/worklist")],
    "qc": [("QC", "/qc")],
    "admin": [("Worklist", "/worklist"), ("QC", "/qc"), ("Operations", "/ops"), ("Report", "/report"),
              ("Users", "/admin/users"), ("Blinding", "/admin/blinding"), ("Study", "/admin/study"),
              ("Audit", "/admin/audit")],
}


def _fmt_dt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return "" if value is None else str(value)


def _fmt_num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _signed(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):+.{digits}f}"


def template_dir() -> Path:
    return Path(str(resources.files("radstream.web") / "templates"))


def static_dir() -> Path:
    return Path(str(resources.files("radstream.web") / "static"))


class Web:
    def __init__(self, settings: Settings, producer: EventProducer | None = None,
                 sessions: SessionStore | None = None) -> None:
        self.settings = settings
        self.sessions = sessions if sessions is not None else SessionStore(settings, session_key(settings)[0])
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir()), autoescape=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["dt"] = _fmt_dt
        env.filters["num"] = _fmt_num
        env.filters["signed"] = _signed
        self.templates = Jinja2Templates(env=env)
        self._producer = producer
        self._plock = threading.Lock()
        self.volumes = LRU(8)
        self.labels = LRU(8)
        self.headers = LRU(256)
        self.kafka_ops = KafkaOps(settings)

    # -- database ------------------------------------------------------------------------
    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        with connect(self.settings, autocommit=True, application_name="radstream-web") as conn:
            yield conn

    # -- who is asking ----------------------------------------------------------------------
    def user(self, request: Request, conn: psycopg.Connection[Any]) -> User | None:
        name = request.session.get("user")
        if not isinstance(name, str):
            return None
        user = get_user(conn, name)
        if user is None or user.disabled:
            request.session.clear()
            return None
        return user

    def need(self, request: Request, conn: psycopg.Connection[Any], *roles: str) -> User:
        user = self.user(request, conn)
        if user is None:
            raise NotSignedIn
        if roles and user.role not in roles:
            raise HTTPException(403, "your role may not open this page")
        return user

    # -- events -----------------------------------------------------------------------------
    def producer(self) -> EventProducer:
        with self._plock:
            if self._producer is None:
                self._producer = EventProducer(self.settings, "radstream-web")
            return self._producer

    def send(self, topic_short: str, key: str, event: Event) -> None:
        self.producer().send_sync(self.settings.topic(topic_short), key, event, timeout=15.0)

    # -- pages --------------------------------------------------------------------------------
    def render(self, request: Request, name: str, user: User | None, status_code: int = 200,
               **context: Any) -> Response:
        flash = request.session.pop("flash", None) if user is not None else None
        ctx = {"user": user, "nav": NAV.get(user.role, []) if user else [], "csrf": csrf_token(request),
               "flash": flash, "path": request.url.path, **context}
        return self.templates.TemplateResponse(request, name, ctx, status_code=status_code)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
        self.kafka_ops.close()
        self.sessions.close()
