"""STOW-RS, the Studies Store Transaction (PS3.18 §10.5): ``POST /dicomweb/studies[/{study}]``.

Unlike ``POST /api/v1/uploads`` every instance is stored or refused on its own (PS3.18
§10.5.3): the response lists the stored ones in ReferencedSOPSequence and the refused ones,
each with its Failure Reason, in FailedSOPSequence. Instances already stored (same SOP
Instance UID and content) count as stored and are not duplicated. Each stored instance
carries its WADO-RS RetrieveURL (a path on this server, ``service.dicomweb.wado``), and the
response carries the study's when every stored instance belongs to one study.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydicom import Dataset, dcmread
from pydicom.errors import BytesLengthException, InvalidDicomError
from starlette.concurrency import run_in_threadpool

from service.deps import Ingestor
from service.dicomweb.multipart import (
    DICOM_MEDIA_TYPE,
    BodyPart,
    MalformedMultipart,
    NotDicomMultipart,
    dicom_boundary,
    media_type_of,
    split_parts,
)
from service.dicomweb.schemas import FailureReason, failure_reason
from service.errors import (
    Forbidden,
    PayloadTooLarge,
    SightlineError,
    Unauthenticated,
    UnprocessableInput,
    error_responses,
)
from service.ingest.reading import ParsedFile
from service.ingest.routes import BodyLimitedRoute
from service.ingest.single import SingleStoreResult, parse_instance, store_parsed
from service.metrics import INGEST_REJECTED, INGESTED
from service.settings import Settings

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_ACCEPTABLE = {DICOM_JSON, "application/json", "application/*", "*/*"}
_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
# pydicom has no single parse exception; the same list as models.dicom_read uses.
_PARSE_ERRORS = (
    InvalidDicomError, BytesLengthException, EOFError, OSError, struct.error, zlib.error, ValueError,
    KeyError, IndexError, TypeError, OverflowError, NotImplementedError, AttributeError,
)  # fmt: skip


class NotAcceptable(SightlineError):
    """PS3.18 §8.7.3: the Store Instances Response is only available as DICOM JSON here."""

    status_code = 406
    code = "not_acceptable"


@dataclass(frozen=True)
class InstanceOutcome:
    """One part of the request: its UIDs where they could be read, and why it failed (None: stored)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure: FailureReason | None = None
    study_instance_uid: str | None = None
    retrieve_url: str | None = None  # WADO-RS path of a stored instance


_STORE_RESPONSE: dict[str, Any] = {"content": {DICOM_JSON: {}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(
        MalformedMultipart,
        Unauthenticated,
        Forbidden,
        NotAcceptable,
        PayloadTooLarge,
        NotDicomMultipart,
        UnprocessableInput,
    ),
    200: {"description": "Every instance stored (or already stored): Store Instances Response", **_STORE_RESPONSE},
    202: {"description": "Some instances stored, some failed: see FailedSOPSequence", **_STORE_RESPONSE},
    409: {"description": "No instance stored: see FailedSOPSequence", **_STORE_RESPONSE},
}

router = APIRouter(tags=["dicomweb"], route_class=BodyLimitedRoute)


@router.post("/studies", response_class=Response, responses=_RESPONSES, summary="STOW-RS: store instances")
async def store_instances(request: Request, _: Ingestor) -> Response:
    """Store every ``application/dicom`` part of a ``multipart/related; type="application/dicom"`` body.

    200 all stored, 202 some failed, 409 none stored; the body is a DICOM JSON Store
    Instances Response (PS3.18 Annex I). 415 for another Content-Type, 406 for an Accept
    that excludes application/dicom+json, 413 past the upload size limit.
    """
    return await _stow(request, expected_study=None)


@router.post(
    "/studies/{study}", response_class=Response, responses=_RESPONSES, summary="STOW-RS: store instances of a study"
)
async def store_study_instances(
    request: Request,
    _: Ingestor,
    study: Annotated[str, Path(max_length=64, pattern=_UID_PATTERN, description="Study Instance UID")],
) -> Response:
    """As ``POST /studies``; an instance of another study fails with Failure Reason C409H."""
    return await _stow(request, expected_study=study)


async def _stow(request: Request, *, expected_study: str | None) -> Response:
    _check_accept(request.headers.get("accept"))
    boundary = dicom_boundary(request.headers.get("content-type"))
    chunks = [chunk async for chunk in request.stream()]  # BodyLimitedRoute counts these bytes: 413 past the limit
    parts = split_parts(b"".join(chunks), boundary)
    if not parts:
        raise MalformedMultipart("the body has no parts")
    settings: Settings = request.app.state.settings
    studies_path = request.url_for("store_instances").path
    outcomes = await run_in_threadpool(_store_parts, settings, parts, expected_study, studies_path)
    return _store_response(outcomes, studies_path)


def _check_accept(accept: str | None) -> None:
    if not accept:
        return
    if not {media_type_of(item) for item in accept.split(",")} & _ACCEPTABLE:
        raise NotAcceptable(f"the response is only available as {DICOM_JSON}")


def _store_parts(
    settings: Settings, parts: list[BodyPart], expected_study: str | None, studies_path: str
) -> list[InstanceOutcome]:
    """Parse every part, then store the valid ones in one batch (``store_parsed``: one
    transaction, a savepoint each), so each succeeds or fails alone and all are answered
    only after their commit. UIDs come from the parsed instance; a refused part's are peeked."""
    outcomes: dict[int, InstanceOutcome] = {}
    accepted: list[ParsedFile] = []
    for index, part in enumerate(parts):
        if (part.media_type or DICOM_MEDIA_TYPE) != DICOM_MEDIA_TYPE:
            outcomes[index] = _failed(
                InstanceOutcome(None, None), index, FailureReason.CANNOT_UNDERSTAND, "part_not_dicom"
            )
            continue
        item = parse_instance(settings, part.content, index)
        study: str | None
        if isinstance(item, ParsedFile):
            meta = item.meta
            known, study = InstanceOutcome(meta.sop_class_uid, meta.sop_instance_uid), meta.study_instance_uid
        else:
            sop_class, sop_instance, study, _ = _peek_uids(part.content)
            known = InstanceOutcome(sop_class, sop_instance)
        if expected_study is not None and study is not None and study != expected_study:
            reason = FailureReason.STUDY_INSTANCE_UID_MISMATCH
            outcomes[index] = _failed(known, index, reason, "study_instance_uid_mismatch")
        elif isinstance(item, ParsedFile):
            accepted.append(item)
        else:
            outcomes[index] = _refused(known, index, item)
    for parsed, result in zip(accepted, store_parsed(settings, accepted), strict=True):
        outcomes[parsed.index] = _stored_outcome(parsed, result, studies_path)
    return [outcomes[index] for index in range(len(parts))]


def _stored_outcome(parsed: ParsedFile, result: SingleStoreResult, studies_path: str) -> InstanceOutcome:
    meta = parsed.meta
    known = InstanceOutcome(meta.sop_class_uid, meta.sop_instance_uid)
    if result.entry is None:
        return _refused(known, parsed.index, result)
    if not result.entry.duplicate:
        INGESTED.labels(source="stow_rs").inc()
    stored_study, sop_uid = result.entry.study_instance_uid, result.entry.sop_instance_uid
    url = f"{studies_path}/{stored_study}/series/{meta.series_instance_uid}/instances/{sop_uid}"
    return InstanceOutcome(known.sop_class_uid, sop_uid, study_instance_uid=stored_study, retrieve_url=url)


def _refused(known: InstanceOutcome, index: int, result: SingleStoreResult) -> InstanceOutcome:
    return _failed(known, index, failure_reason(result.status_code, result.code), result.code or "refused")


def _failed(known: InstanceOutcome, index: int, reason: FailureReason, code: str) -> InstanceOutcome:
    """The refusal, logged by part index, code and UIDs only (never patient attributes)."""
    INGEST_REJECTED.labels(code=code).inc()
    context = {
        "part": index,
        "code": code,
        "failure_reason": f"{reason:04X}",
        "sop_instance_uid": known.sop_instance_uid,
    }
    logger.info("stow-rs instance refused", extra=context)
    return InstanceOutcome(known.sop_class_uid, known.sop_instance_uid, reason)


def _peek_uids(content: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """SOP Class, SOP Instance, Study and Series Instance UIDs, each None where it cannot be read."""
    keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    try:
        ds = dcmread(BytesIO(content), stop_before_pixels=True, force=True)
        values = [ds.get(keyword) for keyword in keywords]
    except _PARSE_ERRORS:
        return None, None, None, None
    sop_class, sop_instance, study, series = (_uid_or_none(value) for value in values)
    return sop_class, sop_instance, study, series


def _uid_or_none(value: object) -> str | None:
    """A forced read of damaged bytes can yield junk: only well-formed UIDs (PS3.5 §9.1) are echoed back."""
    text = str(value) if value is not None else ""
    return text if len(text) <= 64 and re.fullmatch(_UID_PATTERN, text) else None


def _store_response(outcomes: list[InstanceOutcome], studies_path: str) -> Response:
    """PS3.18 Table 10.5.3-1 statuses with the Store Instances Response Module (Annex I, Table I.2-1)."""
    response = Dataset()
    stored = [_sop_item(outcome) for outcome in outcomes if outcome.failure is None]
    failed = [_sop_item(outcome) for outcome in outcomes if outcome.failure is not None]
    if stored:
        response.ReferencedSOPSequence = stored
        studies = {outcome.study_instance_uid for outcome in outcomes if outcome.failure is None}
        if len(studies) == 1 and None not in studies:
            response.RetrieveURL = f"{studies_path}/{studies.pop()}"
    if failed:
        response.FailedSOPSequence = failed
    status_code = 200 if not failed else 202 if stored else 409
    return Response(response.to_json(), status_code=status_code, media_type=DICOM_JSON)


def _sop_item(outcome: InstanceOutcome) -> Dataset:
    item = Dataset()
    if outcome.sop_class_uid is not None:
        item.ReferencedSOPClassUID = outcome.sop_class_uid
    if outcome.sop_instance_uid is not None:
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if outcome.retrieve_url is not None:
        item.RetrieveURL = outcome.retrieve_url
    if outcome.failure is not None:
        item.FailureReason = int(outcome.failure)
    return item
