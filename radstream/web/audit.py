"""The audit trail (table ``audit_log``): who viewed which patient's results, who gave which feedback."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def audit(conn: psycopg.Connection[Any], username: str | None, action: str, *, target_type: str | None = None,
          target_id: str | None = None, patient_key: str | None = None, study_instance_uid: str | None = None,
          client_addr: str | None = None, detail: dict[str, Any] | None = None) -> None:
    conn.execute(
        """INSERT INTO audit_log (username, action, target_type, target_id, patient_key, study_instance_uid,
                                  client_addr, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (username, action, target_type, target_id, patient_key, study_instance_uid, client_addr,
         Jsonb(detail or {})),
    )


def recent(conn: psycopg.Connection[Any], limit: int = 200) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT at, username, action, target_type, target_id, study_instance_uid, client_addr
           FROM audit_log ORDER BY id DESC LIMIT %s""", (limit,),
    ).fetchall()
