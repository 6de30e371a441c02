"""Radiologist endpoints: the triaged worklist, a study's detail, and its PNG pictures."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.active_model import active_model, manifest_of
from service.db.audit import record_event
from service.deps import Admin, AppSettings, DbSession, Reader, Store
from service.errors import (
    BadRequest,
    ErrorEnvelope,
    Forbidden,
    NotFound,
    Unauthenticated,
    UnprocessableInput,
    error_responses,
)
from service.worklist import results as study_results
from service.worklist import service as worklist_service
from service.worklist.images import instance_png
from service.worklist.schemas import ImageKind, SeriesSlices, StudyDetail, WorklistPage, WorklistQuery
from service.worklist.series import series_slices

# Patient images: only the user's own browser may keep them, and not for long.
IMAGE_CACHE_CONTROL = "private, max-age=300"

IMAGE_404 = (
    "instance_not_found (unknown SOP Instance UID), result_not_ready (not analysed yet) or "
    "image_missing (the stored file is gone)"
)

router = APIRouter(tags=["worklist"])


@router.get(
    "/worklist",
    response_model=WorklistPage,
    summary="Triaged worklist: clinical priority, then AI suspicion, then age",
    responses={
        304: {"description": "Not Modified: the page still has the ETag sent in If-None-Match"},
        **error_responses(BadRequest, Unauthenticated, Forbidden, UnprocessableInput),
    },
)
def list_worklist(db: DbSession, _: Reader, request: Request, query: Annotated[WorklistQuery, Query()]) -> Response:
    """One row per study, ordered by clinical priority, then AI suspicion, then age.

    Order: ``clinical_priority`` descending, ``triage_score`` descending (unscored last),
    ``received_at`` ascending (the oldest first within equal scores), then the study id.
    Keyset-paged: pass ``next_cursor`` back as ``cursor``. Studies that arrive meanwhile
    never make a page repeat or skip a study whose score did not change between pages.

    The answer carries an ``ETag`` (a hash of the body); send it back in ``If-None-Match``
    to get ``304 Not Modified`` with no body while the page is unchanged.
    """
    body = worklist_service.page(db, query).model_dump_json().encode()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against a list of tags, or ``*``."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/studies/{study_uid}",
    response_model=StudyDetail,
    summary="A study with its series, instances, jobs and latest results",
    responses=error_responses(Unauthenticated, Forbidden, NotFound, UnprocessableInput),
)
def get_study(db: DbSession, settings: AppSettings, reader: Reader, request: Request, study_uid: str) -> StudyDetail:
    """Image URLs are paths on this server, never built from the request's Host header.
    Every view is recorded in the audit trail (action ``view``)."""

    def image_url(sop_uid: str, kind: ImageKind) -> str:
        return request.url_for("instance_image", sop_uid=sop_uid, kind=kind.value).path

    results_url = request.url_for("study_results", study_uid=study_uid).path
    model = active_model(db, settings)
    labels = manifest_of(model, settings).labels
    detail = worklist_service.study_detail(db, study_uid, image_url, results_url, labels, model)
    client = request.client.host if request.client else None
    record_event(db, actor=reader.token_name, role=reader.role.value, action="view", study_uid=study_uid, client=client)
    return detail


@router.get(
    "/series/{series_uid}/slices",
    response_model=SeriesSlices,
    summary="The series' per-slice tumour probabilities in anatomical order (its score curve)",
    responses=error_responses(Unauthenticated, Forbidden, NotFound, UnprocessableInput),
)
def get_series_slices(db: DbSession, settings: AppSettings, _: Reader, series_uid: str) -> SeriesSlices:
    """Ordered by position along the slice normal when every frame has one, else by Instance
    Number and frame; ``key_index`` points at the key slice of the series score. The active
    model's slices only."""
    return series_slices(db, series_uid, active_model(db, settings))


@router.get(
    "/instances/{sop_uid}/{kind}.png",
    name="instance_image",
    response_class=Response,
    summary="original, heatmap, overlay or contour picture of an instance (image/png)",
    responses={
        200: {"content": {"image/png": {}}, "description": "The PNG picture"},
        **error_responses(Unauthenticated, Forbidden, UnprocessableInput),
        404: {"description": IMAGE_404, "model": ErrorEnvelope},
    },
)
def get_instance_image(
    db: DbSession, store: Store, settings: AppSettings, _: Reader, sop_uid: str, kind: ImageKind
) -> Response:
    """The latest result's picture; before a result, ``original`` is rendered from the stored
    file and the other three answer 404 ``result_not_ready``."""
    png = instance_png(
        db,
        store,
        sop_uid,
        kind,
        model=active_model(db, settings),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_decode_bytes,
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": IMAGE_CACHE_CONTROL})


@router.get(
    "/studies/{study_uid}/results",
    name="study_results",
    response_model=study_results.StudyResults,
    summary="The study's results as DICOM objects (SR, Secondary Capture, presentation state) and their deliveries",
    responses=error_responses(Unauthenticated, Forbidden, NotFound, UnprocessableInput),
)
def get_study_results(db: DbSession, _: Reader, request: Request, study_uid: str) -> study_results.StudyResults:
    """Every generation's objects, newest first, with one delivery record per configured
    destination (attempts, last status), and the study's turnaround once delivered."""

    def object_url(sop_uid: str) -> str:
        return request.url_for("result_object", sop_uid=sop_uid).path

    return study_results.study_results(db, study_uid, object_url)


@router.get(
    "/result-objects/{sop_uid}",
    name="result_object",
    response_class=Response,
    summary="One result object as a DICOM file (application/dicom)",
    responses={
        200: {"content": {"application/dicom": {}}, "description": "The DICOM Part 10 file"},
        **error_responses(Unauthenticated, Forbidden, NotFound, UnprocessableInput),
    },
)
def get_result_object(db: DbSession, store: Store, _: Reader, sop_uid: str) -> Response:
    obj = study_results.result_object(db, sop_uid)
    return Response(
        store.get(obj.blob_key),
        media_type="application/dicom",
        headers={"Cache-Control": IMAGE_CACHE_CONTROL, "Content-Disposition": f'attachment; filename="{sop_uid}.dcm"'},
    )


@router.post(
    "/studies/{study_uid}/results/redeliver",
    summary="Send the current result objects again where their delivery failed (admin)",
    responses=error_responses(Unauthenticated, Forbidden, NotFound, UnprocessableInput),
)
def redeliver_study_results(db: DbSession, _: Admin, study_uid: str) -> dict[str, int]:
    """Failed deliveries of the current generation go back to pending with a fresh count of
    attempts; the workers' sweep pushes them within ``SIGHTLINE_SERIES_SWEEP_SECONDS``."""
    return {"requeued": study_results.redeliver(db, study_uid)}
