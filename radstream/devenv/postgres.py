"""A project-local PostgreSQL cluster from the operating system's packages."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radstream.devenv.process import ManagedProcess, port_open, wait_until


def pg_bindir() -> Path:
    """The newest /usr/lib/postgresql/<N>/bin, or the directory of initdb on PATH."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL server binaries not found (install the postgresql package)")


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: drop to the 'postgres' system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs the 'postgres' system user (postgresql package)") from exc
    return "postgres"


def _drop_privileges() -> dict[str, Any]:
    """subprocess arguments that run a child as 'postgres' (uid, gid and no root groups)."""
    user = _run_as()
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


@dataclass
class PostgresServer:
    """initdb into ``home/data``; run on ``port`` with a user and database for radstream."""

    home: Path
    port: int = 5432
    host: str = "127.0.0.1"
    user: str = "radstream"
    password: str = "radstream"
    database: str = "radstream"

    @property
    def data_dir(self) -> Path:
        return (self.home / "data").resolve()

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("postgres", self.home / "postgres.pid", self.home / "postgres.log")

    def conninfo(self, database: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} user={self.user} password={self.password} "
            f"dbname={database or self.database}"
        )

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in [path, *path.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _make_traversable(self) -> None:
        """The 'postgres' user must reach the data folder: add search (x) permission where missing."""
        if os.geteuid() != 0:
            return
        for parent in self.home.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    def _init(self) -> None:
        bindir = pg_bindir()
        self.home.mkdir(parents=True, exist_ok=True)
        self._make_traversable()
        self.home.resolve().chmod(0o755)
        pwfile = self.home / "pwfile"
        pwfile.write_text(self.password + "\n")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.home.resolve())
        done = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
             f"--pwfile={pwfile.resolve()}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, **_drop_privileges(),
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# radstream local cluster\n"
                f"listen_addresses = '{self.host}'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
            )

    def start(self, timeout: float = 60.0) -> None:
        if self.process.running() and port_open(self.host, self.port):
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._init()
        bindir = pg_bindir()
        self._chown(self.home.resolve())
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        self.process.start(argv, **_drop_privileges())
        wait_until(self.ready, timeout, interval=0.2, what=f"PostgreSQL on {self.host}:{self.port}")
        self._ensure_database()

    def ready(self) -> bool:
        if not self.process.running():
            raise RuntimeError(f"PostgreSQL exited; see {self.process.log_file}")
        if not port_open(self.host, self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if row is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> bool:
        return self.process.stop(timeout=60)
