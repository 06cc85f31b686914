"""Admin pages: users, the blinding map, the audit trail, operations and the validation report."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, fields
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from radstream.report.figures import PipelineReport, pipeline_report, pipelines_in_db
from radstream.web import queries as q
from radstream.web.audit import audit, recent
from radstream.web.context import Web
from radstream.web.ops import db_figures
from radstream.web.passwords import PasswordPolicy
from radstream.web.plots import bars
from radstream.web.security import check_csrf
from radstream.web.users import ROLES, UserError, add_user, list_users, set_disabled


def _reports(web: Web, conn: Any) -> list[PipelineReport]:
    names = sorted(set(web.settings.pipeline_names()) | set(pipelines_in_db(conn)))
    return [pipeline_report(conn, n) for n in names]


def routes(web: Web) -> list[Route]:
    def users_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            users = list_users(conn)
        return web.render(request, "admin_users.html", user, users=users, roles=ROLES, error=None)

    def _users_post(request: Request, form: Any) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            action = form.get("action")
            name = str(form.get("username") or "").replace("\x00", "")
            try:
                if action == "add":
                    pw = str(form.get("password") or "")
                    add_user(conn, name, str(form.get("role") or ""), pw or None,
                             str(form.get("display_name") or "") or None,
                             policy=PasswordPolicy.from_settings(web.settings))
                elif action in ("disable", "enable"):
                    if name == user.username:
                        raise UserError("you cannot disable yourself")
                    if not set_disabled(conn, name, action == "disable"):
                        raise UserError("no such user")
                else:
                    raise UserError("unknown action")
            except UserError as exc:
                return web.render(request, "admin_users.html", user, status_code=400, users=list_users(conn),
                                  roles=ROLES, error=str(exc))
            audit(conn, user.username, f"user_{action}", target_type="user", target_id=name)
        return RedirectResponse("/admin/users", 303)

    async def users_post(request: Request) -> Response:
        form = await check_csrf(request)
        return await run_in_threadpool(_users_post, request, form)

    def blinding(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            rows = q.blinding_map(conn)
            audit(conn, user.username, "view_blinding_map")
        return web.render(request, "admin_blinding.html", user, rows=rows)

    def audit_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            rows = recent(conn, 300)
        return web.render(request, "admin_audit.html", user, rows=rows)

    def _ops_data() -> dict[str, Any]:
        with web.db() as conn:
            figs = db_figures(conn)
        k = web.kafka_ops.figures()
        return {**figs, "kafka": k}

    def ops_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
        return web.render(request, "ops.html", user, **_ops_data())

    def ops_live(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
        return web.render(request, "ops_live.html", user, **_ops_data())

    def ops_api(request: Request) -> Response:
        with web.db() as conn:
            web.need(request, conn, "admin")
        d = _ops_data()
        k = d["kafka"]
        return JSONResponse({
            "pipelines": [{kk: (float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, int) else v)
                           for kk, v in p.items()} for p in d["pipelines"]],
            "totals": {kk: int(v) for kk, v in d["totals"].items()},
            "kafka": {"ok": k.ok, "error": k.error, "topic_counts": k.topic_counts,
                      "lags": [asdict(g) for g in k.lags]},
        })

    def report_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            reports = _reports(web, conn)
            audit(conn, user.username, "view_report")
        plots = [
            bars([(r.pipeline, r.turnaround_s_p50) for r in reports], unit="s", title="turnaround p50"),
            bars([(r.pipeline, r.turnaround_s_p90) for r in reports], unit="s", title="turnaround p90"),
            bars([(r.pipeline, r.agreement_pct) for r in reports], unit="%", title="reader agreement with the model"),
            bars([(r.pipeline, r.review_time_s_mean) for r in reports], unit="s", title="review time (mean)"),
        ]
        return web.render(request, "report.html", user, reports=reports, plots=plots)

    def report_csv(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            reports = _reports(web, conn)
            audit(conn, user.username, "download_report")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[*(f.name for f in fields(PipelineReport)), "exams_pending"])
        w.writeheader()
        for r in reports:
            w.writerow(r.as_row())
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="radstream-report.csv"'})

    return [
        Route("/admin/users", users_page, methods=["GET"]),
        Route("/admin/users", users_post, methods=["POST"]),
        Route("/admin/blinding", blinding, methods=["GET"]),
        Route("/admin/audit", audit_page, methods=["GET"]),
        Route("/ops", ops_page, methods=["GET"]),
        Route("/ops/live", ops_live, methods=["GET"]),
        Route("/api/ops", ops_api, methods=["GET"]),
        Route("/report", report_page, methods=["GET"]),
        Route("/report.csv", report_csv, methods=["GET"]),
    ]
