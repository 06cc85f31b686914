"""Sign-in throttling (table ``login_throttle``): per account name and per client address.

Each failed sign-in counts against the name as typed (lower-cased; whether or not such an account
exists, so a lock says nothing about which accounts exist) and against the client address. Failures
more than ``web.login_window_s`` older than the latest one are forgotten. Once a subject has more
than its free failures (``web.login_free_failures``, ``..._per_address``) it is locked for
``web.login_lockout_s``, doubled with each further failure up to ``web.login_lockout_max_s``.
While locked, sign-in is refused without checking the password; the lock ends by itself, and a
successful sign-in clears the account's count. Every refusal and every lock is in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from radstream.settings import WebSettings


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    free_user: int = 5
    free_addr: int = 20
    window_s: float = 900.0
    lockout_s: float = 30.0
    lockout_max_s: float = 900.0

    @classmethod
    def from_settings(cls, web: WebSettings) -> ThrottlePolicy:
        return cls(free_user=web.login_free_failures, free_addr=web.login_free_failures_per_address,
                   window_s=web.login_window_s, lockout_s=web.login_lockout_s, lockout_max_s=web.login_lockout_max_s)

    def lock_s(self, failures: int, free: int) -> float:
        """How long a subject with ``failures`` recent failures is locked (0: not locked)."""
        over = failures - free
        if over <= 0:
            return 0.0
        return float(min(self.lockout_max_s, self.lockout_s * 2 ** min(over - 1, 30)))


@dataclass(frozen=True, slots=True)
class Lock:
    kind: str  # "user" or "addr"
    subject: str
    failures: int
    seconds: float


def subjects(username: str, client_addr: str | None) -> list[tuple[str, str]]:
    return [("user", username.strip().lower()[:200]), ("addr", (client_addr or "unknown")[:100])]


def locked_for(conn: psycopg.Connection[Any], username: str, client_addr: str | None) -> float:
    """Seconds until sign-in is allowed again for this name and address (0: allowed now)."""
    (u_kind, u_subj), (a_kind, a_subj) = subjects(username, client_addr)
    row = conn.execute(
        """SELECT COALESCE(max(EXTRACT(EPOCH FROM locked_until - now())), 0) FROM login_throttle
           WHERE ((kind = %s AND subject = %s) OR (kind = %s AND subject = %s)) AND locked_until > now()""",
        (u_kind, u_subj, a_kind, a_subj)).fetchone()
    return max(0.0, float(row[0])) if row else 0.0


def record_failure(conn: psycopg.Connection[Any], policy: ThrottlePolicy, username: str,
                   client_addr: str | None) -> list[Lock]:
    """Count a failed sign-in; the locks it starts."""
    locks = []
    for kind, subject in subjects(username, client_addr):
        row = conn.execute(
            """INSERT INTO login_throttle AS t (kind, subject, failures, first_failure_at, last_failure_at)
               VALUES (%(kind)s, %(subject)s, 1, now(), now())
               ON CONFLICT (kind, subject) DO UPDATE SET
                   failures = CASE WHEN t.last_failure_at < now() - make_interval(secs => %(window)s)
                                   THEN 1 ELSE t.failures + 1 END,
                   first_failure_at = CASE WHEN t.last_failure_at < now() - make_interval(secs => %(window)s)
                                           THEN now() ELSE t.first_failure_at END,
                   last_failure_at = now(),
                   locked_until = CASE WHEN t.last_failure_at < now() - make_interval(secs => %(window)s)
                                       THEN NULL ELSE t.locked_until END
               RETURNING failures""",
            {"kind": kind, "subject": subject, "window": float(policy.window_s)}).fetchone()
        failures = int(row[0]) if row else 1
        seconds = policy.lock_s(failures, policy.free_user if kind == "user" else policy.free_addr)
        if seconds > 0:
            conn.execute("""UPDATE login_throttle SET locked_until = now() + make_interval(secs => %s)
                            WHERE kind = %s AND subject = %s""", (seconds, kind, subject))
            locks.append(Lock(kind, subject, failures, seconds))
    # forget what no window or lock covers any more
    conn.execute("""DELETE FROM login_throttle WHERE last_failure_at < now() - make_interval(secs => %s)
                    AND (locked_until IS NULL OR locked_until < now())""", (float(policy.window_s),))
    return locks


def record_success(conn: psycopg.Connection[Any], username: str) -> None:
    """A successful sign-in clears the account's count (not the address's)."""
    (kind, subject), _ = subjects(username, None)
    conn.execute("DELETE FROM login_throttle WHERE kind = %s AND subject = %s", (kind, subject))
