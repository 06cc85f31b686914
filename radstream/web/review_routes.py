"""Worklist, study result page (priors, plot, overlay viewer), feedback with corrected SEG, deep links."""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from radstream.dicom_seg import SegRefused, inspect_seg, referenced_series, seg_volume_ml
from radstream.events.models import ReviewSubmitted
from radstream.kafka.producer import DeliveryFailed
from radstream.store import ContentStore
from radstream.web import queries as q
from radstream.web.audit import audit
from radstream.web.blinded import RATINGS, case_segmentations, is_study_case, own_ratings
from radstream.web.context import Web
from radstream.web.findings import FeedbackError, findings_for, review_event
from radstream.web.images import overlay_png, slice_png
from radstream.web.plots import series_from_longitudinal, volume_over_time
from radstream.web.security import check_csrf
from radstream.web.users import User
from radstream.web.viewer import load_view, patient_header

READ_ROLES = ("reader", "admin")
VIEW_ROLES = ("reader", "qc", "admin")
PNG_HEADERS = {"Cache-Control": "no-store"}  # patient images: never kept by browsers or proxies


def _date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def visible_result(web: Web, conn: Any, user: User, result_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The result and its worklist row, if this user may see it (readers: only cases cleared by QC)."""
    res = q.result(conn, result_id)
    wl = q.worklist_row(conn, result_id)
    if res is None or wl is None:
        raise HTTPException(404, "no such result")
    if user.role == "reader" and not wl["visible_to_readers"]:
        raise HTTPException(404, "no such result")
    return res, wl


def routes(web: Web) -> list[Route]:
    def worklist(request: Request) -> Response:
        qp = request.query_params
        with web.db() as conn:
            user = web.need(request, conn, *READ_ROLES)
            status = qp.get("status") if qp.get("status") in q.STATUSES else None
            qc_status = qp.get("qc") if qp.get("qc") in q.QC_STATUSES else None
            f = q.WorklistFilter(pipeline=qp.get("pipeline") or None, status=status,
                                 q=(qp.get("q") or "")[:200] or None, date_from=_date(qp.get("from")),
                                 date_to=_date(qp.get("to")), qc_status=qc_status)
            rows = q.worklist(conn, user.username, f, readers_only=user.role != "admin")
            pipelines = q.pipelines(conn)
        return web.render(request, "worklist.html", user, rows=rows, f=f, pipelines=pipelines, statuses=q.STATUSES,
                          qc_statuses=q.QC_STATUSES, blinded=user.role != "admin")

    def result_page(request: Request) -> Response:
        result_id = request.path_params["result_id"]
        with web.db() as conn:
            user = web.need(request, conn, *VIEW_ROLES)
            res, wl = visible_result(web, conn, user, result_id)
            if res["status"] != "completed":
                raise HTTPException(404, "no completed result")
            audit(conn, user.username, "view_result", target_type="result", target_id=result_id,
                  patient_key=res["patient_key"], study_instance_uid=res["study_instance_uid"],
                  client_addr=_client(request))
            if user.role == "reader":
                q.claim(conn, result_id, user.username)
            series = q.series_of(conn, list(res["series_instance_uids"] or []))
            meas = q.measurements(conn, result_id)
            dets = q.detections(conn, result_id)
            # a reader sees only their own reviews and corrections (independent reads), and only the
            # timepoints QC has let through; admins see everything
            own = user.username if user.role == "reader" else None
            longi = q.longitudinal(conn, res["patient_key"], res["pipeline"], reviewer=own,
                                   readers_only=user.role == "reader")
            reviews = q.reviews_of(conn, result_id, reviewer=own)
            header = patient_header(web, conn, res)
            view = load_view(web, conn, res)
            # the blinded multi-reader study: every segmentation of the case by letter and hash only
            study_segs = case_segmentations(web, conn, res, user.username, with_sources=user.role == "admin") \
                if is_study_case(conn, res) else []
            ratings = own_ratings(conn, result_id, user.username) if study_segs else {}
        study = bool(study_segs) and user.role != "admin"
        if study:  # nothing that tells the model's segmentation from the others
            meas, dets, longi, reviews = [], [], [], []
        groups = series_from_longitudinal(longi, result_id)
        trends = []
        progression: bool | None = None
        for (name, label), rows in groups.items():
            current = next((r for r in rows if r["current"]), None)
            thr = rows[0]["progression_threshold_pct"]
            if current is not None and current["progression"] is not None:
                progression = bool(current["progression"]) if progression is None else progression or bool(
                    current["progression"])
            plot = volume_over_time([(r["timepoint_date"], float(r["volume_ml"]), r["current"]) for r in rows],
                                    baseline=float(rows[0]["baseline_ml"]) if rows else None,
                                    threshold_pct=float(thr) if thr is not None else None, title=f"{name} {label}")
            trends.append({"name": name, "label": label, "rows": rows, "current": current, "plot": plot,
                           "threshold": thr})
        findings = findings_for(res, meas, dets, progression)
        opened = dict(request.session.get("opened") or {})
        opened[result_id] = time.time()
        request.session["opened"] = dict(list(opened.items())[-10:])
        model_volume = next((float(m["value"]) for m in meas if m["unit"] == "mL" and m["name"] == "volume"), None)
        return web.render(
            request, "result.html", user, res=res, wl=wl, series=series, meas=meas, dets=dets, trends=trends,
            progression=progression, reviews=reviews, header=header, findings=findings,
            blinded=bool(res["blinding_hash"]) and user.role != "admin", model_volume=model_volume,
            depth=view.volume.depth if view else 0, start=view.start if view else 0,
            has_overlay=view is not None and (view.labels is not None or bool(study_segs)),
            overlay_base=(f"/results/{result_id}/segs/{study_segs[0].blinding_hash}/overlay/" if study_segs
                          else f"/results/{result_id}/overlay/"),
            image_shape=view.volume.pixels.shape[1:] if view else None,
            can_review=user.role in READ_ROLES and not study, study=study, study_segs=study_segs,
            ratings=ratings, rating_choices=RATINGS, can_rate=user.role in READ_ROLES,
        )

    def _png(request: Request, overlay: bool) -> Response:
        result_id = request.path_params["result_id"]
        k = int(request.path_params["k"])
        with web.db() as conn:
            user = web.need(request, conn, *VIEW_ROLES)
            res, _ = visible_result(web, conn, user, result_id)
            if overlay and user.role != "admin" and is_study_case(conn, res):
                raise HTTPException(404, "no such overlay: segmentations of this case are shown by their hash")
            view = load_view(web, conn, res)
        if view is None or not 0 <= k < view.volume.depth:
            raise HTTPException(404, "no such slice")
        if overlay:
            if view.labels is None:
                raise HTTPException(404, "no segmentation")
            return Response(overlay_png(view.labels, k), media_type="image/png", headers=PNG_HEADERS)
        return Response(slice_png(view.volume, k), media_type="image/png", headers=PNG_HEADERS)

    def slice_image(request: Request) -> Response:
        return _png(request, overlay=False)

    def overlay_image(request: Request) -> Response:
        return _png(request, overlay=True)

    def _corrected_seg(upload: UploadFile | None, data: bytes, res: dict[str, Any]) -> tuple[str | None, float | None]:
        """Validate an uploaded SEG in a staging file; only a valid one reaches the store."""
        if upload is None or not data:
            return None, None
        staging = Path(web.settings.home) / "staging" / "uploads"
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=staging, suffix=".dcm") as fh:
            fh.write(data)
            fh.flush()
            path = Path(fh.name)
            try:
                inspect_seg(path)  # header checks and the decoded-size limit, before any pixel is decoded
                refs = referenced_series(path)
                total, _ = seg_volume_ml(path)
            except SegRefused as exc:
                raise FeedbackError(f"the uploaded file is not a usable DICOM SEG: {exc}") from exc
            except Exception as exc:  # any parse failure: not a usable SEG
                raise FeedbackError(f"the uploaded file is not a readable DICOM SEG ({type(exc).__name__})") from exc
        if refs and not refs & set(res["series_instance_uids"] or []):
            raise FeedbackError("the uploaded SEG refers to another series")
        stored = ContentStore.from_settings(web.settings).add_bytes(data)
        return stored.uri, round(total, 3)

    def _submit(request: Request, form: Any, seg_data: bytes) -> Response:
        result_id = request.path_params["result_id"]
        with web.db() as conn:
            user = web.need(request, conn, *READ_ROLES)
            res, _ = visible_result(web, conn, user, result_id)
            meas = q.measurements(conn, result_id)
            dets = q.detections(conn, result_id)
            longi = [r for r in q.longitudinal(conn, res["patient_key"], res["pipeline"])
                     if r["result_id"] == result_id]
            progression = None
            for r in longi:
                if r["progression"] is not None:
                    progression = bool(r["progression"]) or bool(progression)
            findings = findings_for(res, meas, dets, progression)
            upload = form.get("seg_file")
            upload = upload if isinstance(upload, UploadFile) and upload.filename else None
            try:
                seg_uri, seg_ml = _corrected_seg(upload, seg_data, res)
                opened = (request.session.get("opened") or {}).get(result_id)
                event: ReviewSubmitted = review_event(form, res, findings, user.username,
                                                      float(opened) if opened else None, seg_uri, seg_ml)
            except FeedbackError as exc:
                raise HTTPException(400, str(exc)) from exc
            try:
                web.send("feedback", result_id, event)
            except DeliveryFailed as exc:
                raise HTTPException(503, "the feedback could not be sent; please submit again") from exc
            audit(conn, user.username, "feedback", target_type="result", target_id=result_id,
                  patient_key=res["patient_key"], study_instance_uid=res["study_instance_uid"],
                  client_addr=_client(request),
                  detail={"review_id": event.review_id, "event_id": event.event_id,
                          "time_spent_s": event.time_spent_s, "corrected_seg_uri": seg_uri})
        msg = f"Feedback sent for accession {res['accession'] or '-'}."
        if seg_ml is not None:
            mv = next((float(m["value"]) for m in meas if m["unit"] == "mL" and m["name"] == "volume"), None)
            msg += f" Corrected segmentation: {seg_ml:.2f} mL" + (f" (model {mv:.2f} mL)." if mv is not None else ".")
        request.session["flash"] = msg
        return RedirectResponse("/worklist", 303)

    async def feedback(request: Request) -> Response:
        form = await check_csrf(request)
        upload = form.get("seg_file")
        data = b""
        if isinstance(upload, UploadFile) and upload.filename:
            data = await upload.read(web.settings.web.max_upload_mb * 1024 * 1024 + 1)
            if len(data) > web.settings.web.max_upload_mb * 1024 * 1024:
                raise HTTPException(413, "the upload is too large")
        return await run_in_threadpool(_submit, request, form, data)

    def _deep(request: Request, rows: list[dict[str, Any]], user: User, what: str) -> Response:
        if user.role == "reader":
            rows = [r for r in rows if r["visible_to_readers"]]
        rows = [r for r in rows if not r["superseded_by_result_id"]] or rows  # the current result of each pipeline
        if not rows:
            raise HTTPException(404, f"no results for this {what} yet")
        if len(rows) == 1:
            target = f"/qc/{rows[0]['result_id']}" if user.role == "qc" else f"/results/{rows[0]['result_id']}"
            return RedirectResponse(target, 303)
        return web.render(request, "choose.html", user, rows=rows, what=what, blinded=user.role != "admin")

    def by_study(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, *VIEW_ROLES)
            rows = q.results_for_study(conn, request.path_params["uid"])
        return _deep(request, rows, user, "study")

    def by_accession(request: Request) -> Response:
        with web.db() as conn:
            user = web.need(request, conn, *VIEW_ROLES)
            rows = q.results_for_accession(conn, request.path_params["accession"])
        return _deep(request, rows, user, "accession number")

    return [
        Route("/worklist", worklist, methods=["GET"]),
        Route("/results/{result_id}", result_page, methods=["GET"]),
        Route("/results/{result_id}/slices/{k:int}.png", slice_image, methods=["GET"]),
        Route("/results/{result_id}/overlay/{k:int}.png", overlay_image, methods=["GET"]),
        Route("/results/{result_id}/feedback", feedback, methods=["POST"]),
        Route("/studies/{uid}", by_study, methods=["GET"]),
        Route("/accession/{accession}", by_accession, methods=["GET"]),
    ]
