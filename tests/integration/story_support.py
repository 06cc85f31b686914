"""What the scenario tests share: exams from the synthetic generator, C-STORE in, a signed-in browser.

Everything here enters or reads radstream only as a user would: the CLI (``radstream send``,
``radstream users``), dcmtk's ``storescu``, the review app over HTTP, the SQL views.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from radstream.bench.stack import BenchStack
from radstream.db.connect import connect

PASSWORD = "story-Passw0rd-long"


@dataclass
class Study:
    kind: str
    timepoint: int
    study_date: str  # YYYYMMDD as the files carry it
    study_uid: str
    accession: str
    folder: Path
    truth: dict[str, Any]

    @property
    def iso_date(self) -> str:
        d = self.study_date
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def studies(root: Path) -> list[Study]:
    from radstream.synth.generate import load_truth

    out = []
    for s in load_truth(root)["studies"]:
        folders = {(root / f).parent for se in s["series"] for f in se["files"]}
        assert len(folders) == 1
        out.append(Study(s["kind"], s["timepoint"], s["study_date"], s["study_instance_uid"], s["accession_number"],
                         folders.pop(), s["truth"]))
    return sorted(out, key=lambda s: (s.kind, s.timepoint, s.accession))


def cli(stack: BenchStack, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "radstream.cli", *args], env={**os.environ, **stack.env()},
                         input=stdin, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def send(stack: BenchStack, study: Study, *, with_dcmtk: bool = False) -> None:
    if with_dcmtk:
        storescu = shutil.which("storescu")
        assert storescu, "dcmtk's storescu is needed (scripts/bootstrap.sh installs it)"
        files = sorted(str(p) for p in study.folder.glob("*.dcm"))
        out = subprocess.run([storescu, "-aet", "MR01", "-aec", "RADSTREAM", "127.0.0.1", str(stack.dicom_port),
                              *files], env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
    else:
        cli(stack, "send", str(study.folder), "--aet", "MR01", "--no-progress")


def view(stack: BenchStack, sql: str, *params: object) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with connect(stack.settings, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


class Browser:
    """A signed-in user of the review app over HTTP: cookies, CSRF tokens from the forms, as a browser."""

    def __init__(self, base_url: str, username: str) -> None:
        self.http = httpx.Client(base_url=base_url, follow_redirects=True, timeout=30)
        page = self.http.get("/login")
        r = self.http.post("/login", data={"username": username, "password": PASSWORD, "next": "",
                                           "csrf_token": csrf(page.text)})
        assert r.status_code == 200 and "/login" not in str(r.url), (r.status_code, r.text[:500])

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def submit(self, path: str, fields: dict[str, str]) -> httpx.Response:
        form = self.http.get(path)
        assert form.status_code == 200, form.status_code
        return self.http.post(path, data={**fields, "csrf_token": csrf(form.text)})


def csrf(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m, page[:500]
    return m.group(1)


def cells(page: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of one table of a page."""
    m = re.search(rf'<table[^>]*id="{table_id}".*?<tbody>(.*?)</tbody>', page, re.S)
    assert m, f"no table {table_id}"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(1), re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in rows]
