"""``POST /api/v1/uploads``: multipart DICOM, PNG or JPEG files from PACS integrations."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive

from service.active_model import active_manifest
from service.db.tables import Role
from service.deps import AppSettings, DbSession, Ingestor, Store, authenticate
from service.errors import (
    Conflict,
    Forbidden,
    PayloadTooLarge,
    SightlineError,
    Unauthenticated,
    UnprocessableInput,
    UnsupportedMediaType,
    error_responses,
)
from service.ingest.dicom_meta import raster_context, text_value
from service.ingest.errors import UploadTooLarge
from service.ingest.reading import NamedUpload, parse_all, read_all
from service.ingest.schemas import ClinicalPriority, UploadResult
from service.ingest.service import store_files
from service.metrics import INGEST_REJECTED, INGESTED
from service.settings import Settings

logger = logging.getLogger(__name__)


class BodyLimitedRoute(APIRoute):
    """Refuses a body over ``settings.max_upload_bytes`` before FastAPI spools the multipart parts.

    Content-Length is checked first; the bytes actually received are counted too, since a
    chunked request has no Content-Length and a client can state a false one.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            # Authenticate before a single body byte is read: strangers cannot make us spool uploads.
            await run_in_threadpool(authenticate, settings, request.headers.get("authorization"), Role.ingest)
            limit = settings.max_upload_bytes
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit)
            counter = _ByteCounter(request.receive, limit)
            try:
                return await handler(Request(request.scope, counter))
            except StarletteHTTPException as exc:
                if counter.exceeded:  # FastAPI reports any body-reading failure as a 400
                    raise _too_large(limit) from exc
                raise

        return limited


class _ByteCounter:
    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive, self.limit, self.received, self.exceeded = receive, limit, 0, False

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise UploadTooLarge(f"the request body exceeds the {self.limit}-byte limit")
        return message


def _too_large(limit: int) -> UploadTooLarge:
    INGEST_REJECTED.labels(code=UploadTooLarge.code).inc()
    return UploadTooLarge(f"the request body exceeds the {limit}-byte limit")


router = APIRouter(tags=["ingest"], route_class=BodyLimitedRoute)


@router.post(
    "/uploads",
    status_code=202,
    response_model=UploadResult,
    summary="Upload DICOM, PNG or JPEG files for analysis",
    responses=error_responses(
        Unauthenticated, Forbidden, Conflict, PayloadTooLarge, UnsupportedMediaType, UnprocessableInput
    ),
)
def upload(
    db: DbSession,
    store: Store,
    settings: AppSettings,
    _: Ingestor,
    files: Annotated[list[UploadFile], File(description="One or more DICOM (PS3.10), PNG or JPEG files")],
    patient_id: Annotated[str | None, Form(max_length=64, description="PNG/JPEG only")] = None,
    patient_name: Annotated[str | None, Form(max_length=324, description="PNG/JPEG only")] = None,
    study_description: Annotated[str | None, Form(max_length=64, description="PNG/JPEG only")] = None,
    study_instance_uid: Annotated[
        str | None, Form(max_length=64, description="Group PNG/JPEG files into this study")
    ] = None,
    clinical_priority: Annotated[ClinicalPriority | None, Form()] = None,
    synthetic: Annotated[
        bool, Form(description="Mark the request's new studies as synthetic test data, not patients")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=128, description="PNG/JPEG: the same key and file sent again are the same instance"),
    ] = None,
) -> UploadResult:
    """Store every file and queue one analysis job per new instance; answer 202.

    All or nothing: every file is read, sniffed by content and decoded before anything is
    written, and all rows are written in one transaction, so if any file is refused the
    whole request is refused (with that file's status and error code, the message naming
    it by index only, as filenames can carry patient data) and nothing of it remains. A
    PACS can then simply re-send the request; files it already delivered come back as
    ``duplicate: true``. A DICOM Study Instance UID already stored for another Patient ID
    is refused with 409 ``study_patient_mismatch``: two patients are never merged.

    DICOM files carry their own identity and patient attributes; PNG/JPEG files get
    generated UIDs (one study per request unless ``study_instance_uid`` names one,
    modality OT) and take the patient fields from the form. ``clinical_priority``
    applies to every study of the request and only ever raises a study's priority.
    ``synthetic`` flags new studies as generated test data (the demo's phantoms); the
    worklist shows the flag so nobody mistakes them for patients.

    Re-sends: the same SOP Instance UID with identical identity attributes and pixel data
    is a duplicate; with other pixels or other patient attributes it is refused with 409
    ``instance_conflict`` and nothing changes. PNG/JPEG files get UIDs derived from their
    content (or from ``Idempotency-Key``), so re-sending them is idempotent too.

    Objects the model may not score (other modalities, localizers, secondary captures,
    objects without pixels such as SR or presentation states) are stored, with no job,
    and shown as not applicable with the reason.
    """
    try:
        uploads = [NamedUpload(i, f.file) for i, f in enumerate(files)]
        contents = read_all(uploads, settings.max_upload_bytes)
        raster = raster_context(
            contents,
            study_instance_uid=text_value(study_instance_uid, 64),
            idempotency_key=text_value(idempotency_key, 128),
            patient_id=patient_id,
            patient_name=patient_name,
            study_description=study_description,
        )
        scope = active_manifest(settings, db).scope  # the active deployment's scope decides applicability
        parsed = parse_all(
            uploads, contents, raster, settings.max_image_pixels, scope, max_bytes=settings.max_decode_bytes
        )
        if synthetic:
            parsed = [replace(item, meta=replace(item.meta, synthetic=True)) for item in parsed]
        priority = clinical_priority.rank if clinical_priority is not None else None
        stored = store_files(db, store, parsed, priority=priority, settings=settings)
    except SightlineError as exc:
        INGEST_REJECTED.labels(code=exc.code).inc()
        logger.info("upload refused", extra={"code": exc.code, "files": len(files)})
        raise
    for item in stored:
        if not item.entry.duplicate:
            INGESTED.labels(source=item.source_kind).inc()
    entries = [item.entry for item in stored]
    accepted = sum(1 for entry in entries if not entry.duplicate)
    return UploadResult(instances=entries, accepted=accepted, duplicates=len(entries) - accepted)
