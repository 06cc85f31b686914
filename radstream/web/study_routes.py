"""Blinded multi-reader study: the lead's page (sources, uploads, unblinded report), readers' ratings."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from radstream.db.segmentations import add_source, register_upload
from radstream.dicom_seg import SegRefused
from radstream.events.models import ReviewSubmitted
from radstream.kafka.producer import DeliveryFailed
from radstream.web.audit import audit
from radstream.web.blinded import RATINGS, case_segmentations, labels_by_name, study_report
from radstream.web.context import Web
from radstream.web.images import overlay_png
from radstream.web.review_routes import READ_ROLES, VIEW_ROLES, visible_result
from radstream.web.security import check_csrf

# review id of one reader's rating of one segmentation: a new rating replaces the earlier one
RATING_NS = uuid.UUID("5b0c7d1e-3f52-4f0e-9a43-5f2a1c8d9e10")


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def blinded_pipelines(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("SELECT DISTINCT pipeline FROM results WHERE blinding_hash IS NOT NULL ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


def routes(web: Web) -> list[Route]:
    def _lead_page(request: Request, conn: psycopg.Connection[Any], user: Any, status_code: int = 200,
                   error: str | None = None) -> Response:
        pipelines = blinded_pipelines(conn)
        wanted = request.query_params.get("pipeline")
        pipeline = wanted if wanted in pipelines else (pipelines[0] if pipelines else None)
        sources = conn.execute("SELECT name, kind, calling_ae_title, description, created_by, created_at "
                               "FROM seg_sources ORDER BY name").fetchall()
        segs = conn.execute("""SELECT blinding_hash, source, status, reason, origin, calling_ae_title,
                                      study_instance_uid, total_ml, received_at
                               FROM segmentations ORDER BY received_at DESC LIMIT 500""").fetchall()
        report = study_report(web, conn, pipeline) if pipeline else None
        audit(conn, user.username, "view_study_report", detail={"pipeline": pipeline})
        return web.render(request, "admin_study.html", user, status_code=status_code, error=error,
                          pipelines=pipelines, pipeline=pipeline, sources=sources, segs=segs, report=report)

    def lead_page(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            return _lead_page(request, conn, user)

    def report_json(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            pipeline = request.query_params.get("pipeline") or ""
            if pipeline not in blinded_pipelines(conn):
                raise HTTPException(404, "no blinded results for this pipeline")
            report = study_report(web, conn, pipeline)
            audit(conn, user.username, "view_study_report", detail={"pipeline": pipeline, "format": "json"})
        return JSONResponse(report)

    def _add_source(request: Request, form: Any) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            name = str(form.get("name") or "").strip()
            ae = str(form.get("calling_ae_title") or "").strip() or None
            description = str(form.get("description") or "").replace("\x00", "").strip()[:500] or None
            error = None
            try:
                add_source(conn, name, kind=str(form.get("kind") or "human"), calling_ae_title=ae,
                           description=description, created_by=user.username)
            except ValueError as exc:
                error = str(exc)
            if error is not None:
                return _lead_page(request, conn, user, 400, error)
            audit(conn, user.username, "seg_source_add", target_type="seg_source", target_id=name,
                  detail={"calling_ae_title": ae}, client_addr=_client(request))
        return RedirectResponse("/admin/study", 303)

    async def add_source_route(request: Request) -> Response:
        form = await check_csrf(request)
        return await run_in_threadpool(_add_source, request, form)

    def _upload(request: Request, source: str, data: bytes) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, "admin")
            try:
                reg = register_upload(conn, web.settings, data, source=source, registered_by=user.username)
            except SegRefused as exc:
                audit(conn, user.username, "seg_upload_refused", target_type="seg_source", target_id=source,
                      detail={"reason": str(exc)}, client_addr=_client(request))
                return _lead_page(request, conn, user, 400, f"Segmentation refused: {exc}")
            audit(conn, user.username, "seg_upload", target_type="segmentation", target_id=reg.seg_id,
                  detail={"source": source, "blinding_hash": reg.blinding_hash, "status": reg.status,
                          "new": reg.created}, client_addr=_client(request))
        request.session["flash"] = (f"Segmentation #{reg.blinding_hash} "
                                    f"{'registered' if reg.created else 'was already registered'} ({reg.status}).")
        return RedirectResponse("/admin/study", 303)

    async def upload(request: Request) -> Response:
        form = await check_csrf(request)
        seg = form.get("seg_file")
        if not isinstance(seg, UploadFile) or not seg.filename:
            raise HTTPException(400, "choose a DICOM SEG file")
        limit = web.settings.web.max_upload_mb * 1024 * 1024
        data = await seg.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, "the upload is too large")
        return await run_in_threadpool(_upload, request, str(form.get("source") or ""), data)

    def _case_seg(conn: psycopg.Connection[Any], request: Request, user: Any) -> tuple[dict[str, Any], Any]:
        res, _ = visible_result(web, conn, user, request.path_params["result_id"])
        h = request.path_params["hash"]
        seg = next((s for s in case_segmentations(web, conn, res, user.username) if s.blinding_hash == h), None)
        if seg is None:
            raise HTTPException(404, "no such segmentation")
        return res, seg

    def seg_overlay(request: Request) -> Response:
        k = int(request.path_params["k"])
        with web.db() as conn:
            user = web.need(request, conn, *VIEW_ROLES)
            res, seg = _case_seg(conn, request, user)
            got = labels_by_name(web, conn, res, seg.seg_uri)
        if got is None or not 0 <= k < got[1].shape[0]:
            raise HTTPException(404, "no such slice")
        return Response(overlay_png(got[1], k), media_type="image/png", headers={"Cache-Control": "no-store"})

    def _rate(request: Request, form: Any) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, *READ_ROLES)
            res, seg = _case_seg(conn, request, user)
            try:
                rating = int(str(form.get("rating") or ""))
            except ValueError:
                rating = 0
            if rating not in RATINGS:
                raise HTTPException(400, "choose a rating from 1 to 5")
            comment = str(form.get("comment") or "").replace("\x00", "").strip()
            if len(comment) > 4000:
                raise HTTPException(400, "the comment is longer than 4000 characters")
            rid = res["result_id"]
            since = (request.session.get("rated") or {}).get(rid) or (request.session.get("opened") or {}).get(rid)
            spent = max(0.0, min(time.time() - float(since), 24 * 3600.0)) if since else 0.0
            review_id = uuid.uuid5(RATING_NS, f"{user.username}|{rid}|{seg.blinding_hash}")
            event = ReviewSubmitted(
                producer="radstream-web", review_id=str(review_id),
                result_id=rid, study_instance_uid=str(res["study_instance_uid"]), pipeline=str(res["pipeline"]),
                reviewer=user.username, findings=[], comment=comment or None, time_spent_s=round(spent, 3),
                blinding_hash=seg.blinding_hash, rating=rating)
            try:
                web.send("feedback", rid, event)
            except DeliveryFailed as exc:
                raise HTTPException(503, "the rating could not be sent; please submit again") from exc
            audit(conn, user.username, "rating", target_type="result", target_id=rid,
                  patient_key=res["patient_key"], study_instance_uid=res["study_instance_uid"],
                  client_addr=_client(request),
                  detail={"blinding_hash": seg.blinding_hash, "rating": rating, "review_id": event.review_id})
        rated = dict(request.session.get("rated") or {})
        rated[rid] = time.time()
        request.session["rated"] = dict(list(rated.items())[-10:])
        request.session["flash"] = f"Rating {rating} sent for segmentation {seg.letter} (#{seg.blinding_hash})."
        return RedirectResponse(f"/results/{rid}#seg-{seg.blinding_hash}", 303)

    async def rate(request: Request) -> Response:
        form = await check_csrf(request)
        return await run_in_threadpool(_rate, request, form)

    return [
        Route("/admin/study", lead_page, methods=["GET"]),
        Route("/admin/study/report.json", report_json, methods=["GET"]),
        Route("/admin/study/sources", add_source_route, methods=["POST"]),
        Route("/admin/study/segmentations", upload, methods=["POST"]),
        Route("/results/{result_id}/segs/{hash:str}/overlay/{k:int}.png", seg_overlay, methods=["GET"]),
        Route("/results/{result_id}/segs/{hash:str}/rating", rate, methods=["POST"]),
    ]
