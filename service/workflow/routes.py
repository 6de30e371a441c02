"""Reading workflow endpoints (claim, release, report, feedback), the audit trail, statistics
and the UPS-RS subset. Every change and its audit event commit in the request's transaction."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from service.active_model import active_manifest
from service.deps import Admin, AppSettings, DbSession, Reader
from service.dicomweb.stow import DICOM_JSON
from service.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthenticated, UnprocessableInput
from service.errors import error_responses as errors
from service.workflow import audit, claims, feedback, stats, ups
from service.workflow.schemas import AuditPage, AuditQuery, FeedbackIn, FeedbackView, Stats, StudyClaim

router = APIRouter(tags=["reading workflow"])
ups_router = APIRouter(tags=["UPS-RS"])

_CHANGE_ERRORS = errors(Unauthenticated, Forbidden, NotFound, Conflict, UnprocessableInput)
_ADMIN_ERRORS = errors(Unauthenticated, Forbidden, UnprocessableInput)


def client_host(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/studies/{study_uid}/claim", response_model=StudyClaim, responses=_CHANGE_ERRORS)
def claim_study(db: DbSession, reader: Reader, request: Request, study_uid: str) -> StudyClaim:
    """Take the study's reading task; idempotent for its holder. 409 ``study_claimed`` (held by
    another reader, named in the message) or ``study_reported``."""
    study = claims.locked_study(db, study_uid)
    changed = claims.claim(db, reader, study)
    detail = None if changed else {"repeat": True}
    audit.record(db, reader, "claim", study_uid=study_uid, client=client_host(request), detail=detail)
    return claims.claim_view(study)


@router.post("/studies/{study_uid}/release", response_model=StudyClaim, responses=_CHANGE_ERRORS)
def release_study(db: DbSession, reader: Reader, request: Request, study_uid: str) -> StudyClaim:
    """Give the task back; 409 ``not_claimant`` unless you hold it (an admin may release any)."""
    study = claims.locked_study(db, study_uid)
    holder = claims.release(db, reader, study)
    audit.record(db, reader, "release", study_uid=study_uid, client=client_host(request), detail={"holder": holder})
    return claims.claim_view(study)


@router.post("/studies/{study_uid}/report", response_model=StudyClaim, responses=_CHANGE_ERRORS)
def report_study(db: DbSession, reader: Reader, request: Request, study_uid: str) -> StudyClaim:
    """Mark the study reported; needs your claim (409 ``not_claimant``), which then ends."""
    study = claims.locked_study(db, study_uid)
    claims.report(db, reader, study)
    audit.record(db, reader, "report", study_uid=study_uid, client=client_host(request))
    return claims.claim_view(study)


@router.post("/studies/{study_uid}/feedback", response_model=FeedbackView, status_code=201, responses=_CHANGE_ERRORS)
def give_feedback(
    db: DbSession, settings: AppSettings, reader: Reader, request: Request, study_uid: str, body: FeedbackIn
) -> FeedbackView:
    """Agree with the model's label, or name the right one (422 ``no_prediction``,
    ``label_required``, ``unknown_label``, ``label_conflict``)."""
    study = claims.locked_study(db, study_uid)
    view = feedback.add(db, reader.token_name, study, body, active_manifest(settings).labels)
    detail = {"agrees": view.agrees, "label": view.reader_label, "model_label": view.model_label}
    audit.record(db, reader, "feedback", study_uid=study_uid, client=client_host(request), detail=detail)
    return view


@router.get("/audit", response_model=AuditPage, responses=_ADMIN_ERRORS)
def list_audit(db: DbSession, _: Admin, query: Annotated[AuditQuery, Query()]) -> AuditPage:
    """Audit events in id order; pass ``next_after_id`` back as ``after_id``."""
    return audit.page(db, query)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}, **_ADMIN_ERRORS},
)
def export_audit(
    db: DbSession, settings: AppSettings, admin: Admin, request: Request, query: Annotated[AuditQuery, Query()]
) -> StreamingResponse:
    """Every matching event as JSON lines, streamed (``limit`` is ignored); the export is audited."""
    filters = query.model_dump(exclude={"limit"}, exclude_none=True)
    audit.record(db, admin, "export_audit", study_uid=None, client=client_host(request), detail=filters)
    return StreamingResponse(audit.export_lines(settings, query), media_type="application/x-ndjson")


@router.get("/admin/stats", response_model=Stats, responses=_ADMIN_ERRORS)
def admin_stats(db: DbSession, settings: AppSettings, _: Admin) -> Stats:
    """Reader agreement per model label, the job queue, processing time (24 h) and failures."""
    return stats.stats(db, active_manifest(settings).labels)


# --- UPS-RS ----------------------------------------------------------------------------

_UPS_ERRORS = errors(BadRequest, Unauthenticated, Forbidden, UnprocessableInput)


async def _raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(_raw_body)]


def _retrieve_url(request: Request) -> ups.UrlFor:
    return lambda study_uid: request.url_for("retrieve_study", study=study_uid).path


@ups_router.get(
    "/workitems",
    response_class=Response,
    summary="UPS-RS: search for workitems (one reading task per study)",
    responses={200: {"content": {DICOM_JSON: {}}}, **_UPS_ERRORS},
)
def search_workitems(request: Request, db: DbSession, _: Reader) -> Response:
    items = ups.search(db, request.query_params.multi_items(), _retrieve_url(request))
    return Response(json.dumps(items), media_type=DICOM_JSON)


@ups_router.get(
    "/workitems/{workitem}",
    response_class=Response,
    summary="UPS-RS: retrieve a workitem",
    responses={200: {"content": {DICOM_JSON: {}}}, **errors(Unauthenticated, Forbidden, NotFound, UnprocessableInput)},
)
def retrieve_workitem(request: Request, db: DbSession, _: Reader, workitem: str) -> Response:
    study = claims.locked_study(db, ups.find_study_uid(db, workitem), lock=False)
    return Response(json.dumps([ups.workitem(study, _retrieve_url(request))]), media_type=DICOM_JSON)


@ups_router.put(
    "/workitems/{workitem}/state",
    response_class=Response,
    summary="UPS-RS: change workitem state (IN PROGRESS = claim, COMPLETED = report, CANCELED = release)",
    responses={
        200: {"description": "Changed; no payload"},
        **errors(BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, UnprocessableInput),
    },
)
def change_workitem_state(request: Request, db: DbSession, reader: Reader, body: RawBody, workitem: str) -> Response:
    """Body: DICOM JSON with ProcedureStepState (0074,1000) and Transaction UID (0008,1195)."""
    state, transaction_uid = ups.parse_state_request(_json(body))
    study_uid = ups.find_study_uid(db, workitem)
    study = claims.locked_study(db, study_uid)
    action = ups.change_state(db, reader, study, state, transaction_uid)
    detail = {"via": "ups-rs", "state": ups.state_of(study)}
    audit.record(db, reader, action, study_uid=study_uid, client=client_host(request), detail=detail)
    return Response(status_code=200)


MAX_STATE_BODY = 64 * 1024


def _json(raw: bytes) -> Any:
    if len(raw) > MAX_STATE_BODY:
        raise ups.InvalidUpsRequest("the body is too large for a state change")
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise ups.InvalidUpsRequest("the body is not JSON") from None
