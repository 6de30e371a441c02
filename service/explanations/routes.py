"""On-demand explanation endpoints: the method catalogue, asking for one, polling it, its PNGs."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi import APIRouter, Request, Response

from service.active_model import active_manifest
from service.db.audit import record_event
from service.db.tables import ExplanationStatus, OnDemandExplanation
from service.deps import AppSettings, DbSession, Reader, Store
from service.errors import ErrorEnvelope, Forbidden, Unauthenticated, UnprocessableInput, error_responses
from service.explanations import service
from service.explanations.catalogue import method_catalogue
from service.explanations.schemas import (
    ExplanationCreate,
    ExplanationImageKind,
    ExplanationImages,
    ExplanationList,
    ExplanationView,
    MethodCatalogue,
)
from service.worklist.routes import etag_matches

# An explanation's picture never changes once done (blob keys are content addresses), but it
# is a patient image: only the user's own browser may keep it.
IMAGE_CACHE_CONTROL = "private, max-age=31536000, immutable"
AUTH_ERRORS = error_responses(Unauthenticated, Forbidden, UnprocessableInput)
CREATE_ERRORS = {
    **AUTH_ERRORS,
    404: {"description": "instance_not_found", "model": ErrorEnvelope},
    409: {
        "description": "instance_not_applicable, analysis_failed or analysis_not_finished: nothing to explain yet",
        "model": ErrorEnvelope,
    },
    422: {
        "description": "validation_error (unknown method), unknown_label, frame_out_of_range",
        "model": ErrorEnvelope,
    },
}

router = APIRouter(tags=["explanations"])
UrlOf = Callable[[OnDemandExplanation], str]


@router.get("/explanation-methods", response_model=MethodCatalogue, responses=AUTH_ERRORS)
def list_methods(_: Reader) -> MethodCatalogue:
    """Every CAM method a reader may ask for, with its paper and kind, and the published
    sanity/faithfulness metrics (``metrics: null`` and ``metrics_note`` when none are)."""
    return method_catalogue()


@router.post(
    "/instances/{instance_id}/explanations",
    response_model=ExplanationView,
    status_code=202,
    responses={
        200: {"description": "Already computed: the cached explanation", "model": ExplanationView},
        **CREATE_ERRORS,
    },
)
def create_explanation(
    db: DbSession, settings: AppSettings, reader: Reader, request: Request, response: Response, instance_id: str,
    body: ExplanationCreate,
) -> ExplanationView:  # fmt: skip
    """Ask for ``method`` over ``target_label`` on one frame of an analysed instance
    (``instance_id``: the instance's id or its SOP Instance UID). 202 with ``Location`` while
    it is queued or running; 200 when it is already done. The same request again is the
    same explanation, never a second computation; a failed one is queued again."""
    requested = service.request_explanation(db, settings, active_manifest(settings, db), reader, instance_id, body)
    row = requested.row
    view = explanation_view(row, requested.sop_instance_uid, request)
    if row.status is ExplanationStatus.done:
        response.status_code = 200
    else:
        response.headers["Location"] = view.url
    if requested.queued_now:
        detail = {"method": row.method, "target_label": row.target_label, "frame": row.frame_index}
        client = request.client.host if request.client else None
        record_event(db, actor=reader.token_name, role=reader.role.value, action="explain", study_uid=None,
                     client=client, detail=detail)  # fmt: skip
    return view


@router.get(
    "/instances/{instance_id}/explanations",
    response_model=ExplanationList,
    responses={**AUTH_ERRORS, 404: {"description": "instance_not_found", "model": ErrorEnvelope}},
)
def list_instance_explanations(db: DbSession, _: Reader, request: Request, instance_id: str) -> ExplanationList:
    """Every explanation asked for on the instance (any frame, method, label), oldest first."""
    rows, sop_uid = service.list_explanations(db, instance_id)
    return ExplanationList(items=[explanation_view(row, sop_uid, request) for row in rows])


@router.get(
    "/explanations/{explanation_id}",
    name="explanation",
    response_model=ExplanationView,
    responses={**AUTH_ERRORS, 404: {"description": "explanation_not_found", "model": ErrorEnvelope}},
)
def get_explanation(db: DbSession, _: Reader, request: Request, explanation_id: uuid.UUID) -> ExplanationView:
    """Poll until ``status`` is ``done`` (then ``images`` holds the PNG URLs) or ``failed``."""
    row, sop_uid = service.get_explanation(db, explanation_id)
    return explanation_view(row, sop_uid, request)


@router.get(
    "/explanations/{explanation_id}/{kind}.png",
    name="explanation_image",
    response_class=Response,
    summary="heatmap, overlay, contour, map or outline picture of a finished explanation (image/png)",
    responses={
        200: {"content": {"image/png": {}}, "description": "The PNG picture"},
        304: {"description": "Not Modified: the picture still has the ETag sent in If-None-Match"},
        **AUTH_ERRORS,
        404: {"description": "explanation_not_found, explanation_not_ready or image_missing", "model": ErrorEnvelope},
    },
)
def get_explanation_image(
    db: DbSession, store: Store, _: Reader, request: Request, explanation_id: uuid.UUID, kind: ExplanationImageKind
) -> Response:
    """Immutable once done: cached privately for a year, with the blob key as its ETag."""
    row, _sop_uid = service.get_explanation(db, explanation_id)
    key = service.image_key(row, kind)
    headers = {"ETag": f'"{key}"', "Cache-Control": IMAGE_CACHE_CONTROL}
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(service.image_bytes(store, key), media_type="image/png", headers=headers)


def explanation_view(row: OnDemandExplanation, sop_uid: str, request: Request) -> ExplanationView:
    """Image URLs are paths on this server, never built from the request's Host header."""
    images = None
    if row.status is ExplanationStatus.done:
        urls = {
            kind.value: request.url_for("explanation_image", explanation_id=str(row.id), kind=kind.value).path
            for kind in ExplanationImageKind
        }
        images = ExplanationImages(**urls)
    return ExplanationView(
        id=row.id, instance_id=row.instance_id, sop_instance_uid=sop_uid, frame_index=row.frame_index,
        model_name=row.model_name, model_version=row.model_version, model_sha256=row.model_sha256,
        method=row.method, target_label=row.target_label, status=row.status, attempts=row.attempts,
        error_code=row.error_code, error_message=row.error_message, cam_strength=row.cam_strength,
        probabilities=row.probabilities, region_reason=row.region_reason, timings_ms=row.timings_ms,
        requested_by=row.requested_by, created_at=row.created_at, finished_at=row.finished_at,
        url=request.url_for("explanation", explanation_id=str(row.id)).path, images=images,
    )  # fmt: skip
