"""A durable, ordered outbox of Kafka records (SQLite in WAL mode, synchronous=FULL).

A record appended here survives a crash of the process or the machine once
:meth:`Outbox.append` returns; records are read back in the order they were appended
and deleted only after Kafka acknowledged them.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    seq: int
    topic: str
    key: bytes | None
    value: bytes
    event_type: str


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, event_type TEXT NOT NULL)"
        )
        self._depth = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    @property
    def depth(self) -> int:
        return self._depth

    def append(self, topic: str, key: bytes | None, value: bytes, event_type: str) -> int:
        """Append one record durably (fsynced before return); returns its sequence number."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, key, value, event_type) VALUES (?, ?, ?, ?)",
                (topic, key, value, event_type),
            )
            self._depth += 1
            return int(cur.lastrowid or 0)

    def peek(self, limit: int) -> list[OutboxRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, event_type FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxRecord(int(r[0]), str(r[1]), r[2], bytes(r[3]), str(r[4])) for r in rows]

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._depth = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
