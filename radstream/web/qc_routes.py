"""The QC step: a QC reviewer approves or rejects each new input before readers see it (QcDecided)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from radstream.events.models import QcDecided, QcDecision
from radstream.kafka.producer import DeliveryFailed
from radstream.web import queries as q
from radstream.web.audit import audit
from radstream.web.context import Web
from radstream.web.security import check_csrf
from radstream.web.viewer import load_view, patient_header

QC_ROLES = ("qc", "admin")


def routes(web: Web) -> list[Route]:
    def queue(request: Request) -> Response:
        status = request.query_params.get("status", "pending")
        status = status if status in q.QC_STATUSES or status == "all" else "pending"
        with web.db() as conn:
            user = web.need(request, conn, *QC_ROLES)
            rows = q.qc_queue(conn, None if status == "all" else status, request.query_params.get("pipeline") or None)
            pipelines = q.pipelines(conn)
        return web.render(request, "qc.html", user, rows=rows, status=status, pipelines=pipelines,
                          pipeline=request.query_params.get("pipeline") or "")

    def item(request: Request) -> Response:
        result_id = request.path_params["result_id"]
        with web.db() as conn:
            user = web.need(request, conn, *QC_ROLES)
            res = q.result(conn, result_id)
            wl = q.worklist_row(conn, result_id)
            if res is None or wl is None:
                raise HTTPException(404, "no such result")
            audit(conn, user.username, "view_qc", target_type="result", target_id=result_id,
                  patient_key=res["patient_key"], study_instance_uid=res["study_instance_uid"],
                  client_addr=request.client.host if request.client else None)
            series = q.series_of(conn, list(res["series_instance_uids"] or []))
            dets = q.detections(conn, result_id)
            header = patient_header(web, conn, res)
            view = load_view(web, conn, res)
        return web.render(request, "qc_item.html", user, res=res, wl=wl, series=series, dets=dets, header=header,
                          depth=view.volume.depth if view else 0, start=view.start if view else 0,
                          image_shape=view.volume.pixels.shape[1:] if view else None)

    def _decide(request: Request, form: Any) -> Response:
        result_id = request.path_params["result_id"]
        decision = form.get("decision")
        if decision not in ("APPROVED", "REJECTED"):
            raise HTTPException(400, "decision must be APPROVED or REJECTED")
        reason = str(form.get("reason") or "").strip()[:1000] or None
        with web.db() as conn:
            user = web.need(request, conn, *QC_ROLES)
            res = q.result(conn, result_id)
            if res is None:
                raise HTTPException(404, "no such result")
            event = QcDecided(producer="radstream-web", decision_id=str(uuid.uuid4()), result_id=result_id,
                              study_instance_uid=res["study_instance_uid"], pipeline=res["pipeline"],
                              reviewer=user.username, decision=QcDecision(decision), reason=reason)
            try:
                web.send("feedback", result_id, event)
            except DeliveryFailed as exc:
                raise HTTPException(503, "the decision could not be sent; please try again") from exc
            audit(conn, user.username, "qc_decision", target_type="result", target_id=result_id,
                  patient_key=res["patient_key"], study_instance_uid=res["study_instance_uid"],
                  client_addr=request.client.host if request.client else None,
                  detail={"decision": decision, "decision_id": event.decision_id})
        request.session["flash"] = f"{decision.lower()}: accession {res['accession'] or '-'}"
        return RedirectResponse("/qc", 303)

    async def decide(request: Request) -> Response:
        form = await check_csrf(request)
        return await run_in_threadpool(_decide, request, form)

    return [
        Route("/qc", queue, methods=["GET"]),
        Route("/qc/{result_id}", item, methods=["GET"]),
        Route("/qc/{result_id}", decide, methods=["POST"]),
    ]
