"""UPS-RS (PS3.18 §11) over the reading task of each study, as IHE AI Workflow for Imaging uses it.

One workitem per study. Its SOP Instance UID is ``2.25.`` + the integer of the study row's
own UUID (PS3.5 B.2): stable, unique, never stored, and turned back into the row's primary
key to find the workitem. The SOP Class is UPS Push.

States follow the study (PS3.4 CC.1.1): SCHEDULED (unclaimed), IN PROGRESS (claimed),
COMPLETED (reported). CANCELED is never shown: a CANCELED request (with the Transaction
UID) releases the claim and the workitem answers SCHEDULED again; a deviation from PS3.4,
where CANCELED is final, chosen because the study still has to be read.

The Transaction UID is the claim's ``claim_transaction_uid``: the client's own when claimed
through UPS-RS, a fresh ``2.25.<uuid4>`` when claimed through the native API. As PS3.4
CC.2.5.1.2 requires, it is never returned, so a natively claimed study is completed
through the native ``/report`` (or released and claimed again through UPS-RS).

Change Workitem State (PS3.18 §11.7; PS3.4 Table CC.2.1-2 statuses in brackets):
200 on success, with no payload; 400 for a missing or wrong Transaction UID [C301], a
request for SCHEDULED [C303], or COMPLETED/CANCELED of a SCHEDULED workitem [C310];
404 for an unknown workitem [C307]; 409 when the state forbids it: IN PROGRESS already
[C302] or COMPLETED already [C300/C311]. Errors use the gateway's JSON error body.

Search (PS3.18 §11.9) matches ProcedureStepState, PatientID (exact), StudyInstanceUID
(plain or in ReferencedRequestSequence; a comma-separated UID list) and
ScheduledProcedureStepPriority, by keyword or tag; other keys answer 400.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from pydicom import Dataset
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from service.db.tables import Study, StudyStatus, as_utc
from service.deps import Principal
from service.errors import BadRequest, Conflict, NotFound
from service.workflow import claims

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
PROCEDURE_STEP_LABEL = "Read brain MRI (AI triaged)"
WORKLIST_LABEL = "Sightline"
SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
PRIORITY = {2: "HIGH", 1: "MEDIUM", 0: "LOW"}  # stat, urgent, routine
STATE_TAG, TRANSACTION_TAG = "00741000", "00081195"
_KEYS = {
    "PROCEDURESTEPSTATE": "state",
    "00741000": "state",
    "PATIENTID": "patient_id",
    "00100020": "patient_id",
    "STUDYINSTANCEUID": "study_uid",
    "0020000D": "study_uid",
    "REFERENCEDREQUESTSEQUENCE.STUDYINSTANCEUID": "study_uid",
    "0040A370.0020000D": "study_uid",
    "SCHEDULEDPROCEDURESTEPPRIORITY": "priority",
    "00741200": "priority",
}
_IGNORED = {"INCLUDEFIELD", "FUZZYMATCHING"}
MAX_LIMIT = 1000

UrlFor = Callable[[str], str]  # study UID -> its WADO-RS RetrieveURL


class WorkitemNotFound(NotFound):
    code = "workitem_not_found"


class InvalidUpsRequest(BadRequest):
    code = "invalid_ups_request"


class WrongTransactionUid(BadRequest):
    code = "transaction_uid_mismatch"


class InvalidTransition(BadRequest):
    code = "invalid_state_transition"


class WorkitemStateConflict(Conflict):
    code = "workitem_state_conflict"


def workitem_uid(study: Study) -> str:
    return f"2.25.{study.id.int}"


def state_of(study: Study) -> str:
    if study.reported_at is not None:
        return COMPLETED
    return IN_PROGRESS if study.claimed_by is not None else SCHEDULED


def find_study_uid(db: Session, item_uid: str) -> str:
    """The Study Instance UID whose workitem is ``item_uid`` (a primary-key lookup); 404 when none."""
    prefix, _, digits = item_uid.partition("2.25.")
    number = int(digits) if not prefix and digits.isdigit() and len(digits) <= 39 else -1
    study_uid = (
        db.scalar(select(Study.study_instance_uid).where(Study.id == uuid.UUID(int=number)))
        if (0 <= number < 2**128)
        else None
    )
    if study_uid is None:
        raise WorkitemNotFound("no workitem with this SOP Instance UID")
    return study_uid


# --- search ----------------------------------------------------------------------------


def search(db: Session, params: list[tuple[str, str]], url: UrlFor) -> list[dict[str, Any]]:
    conditions, limit, offset = _parse_search(params)
    order = (Study.clinical_priority.desc(), func.coalesce(Study.triage_score, -1.0).desc(), Study.received_at)
    studies = db.scalars(select(Study).where(*conditions).order_by(*order, Study.id).limit(limit).offset(offset))
    return [workitem(study, url) for study in studies]


def _parse_search(params: list[tuple[str, str]]) -> tuple[list[ColumnElement[bool]], int, int]:
    conditions: list[ColumnElement[bool]] = []
    limit, offset = 100, 0
    for key, value in params:
        name = key.upper()
        if name in ("LIMIT", "OFFSET"):
            number = _count(key, value)
            limit, offset = (min(number, MAX_LIMIT), offset) if name == "LIMIT" else (limit, number)
        elif name in _KEYS:
            conditions.append(_condition(_KEYS[name], value))
        elif name not in _IGNORED:
            raise InvalidUpsRequest(f"unsupported search key {key!r}")
    return conditions, limit, offset


def _count(key: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidUpsRequest(f"{key} must be a non-negative integer")
    return int(value)


def _condition(kind: str, value: str) -> ColumnElement[bool]:
    if kind == "state":
        return _state_condition(value)
    if kind == "patient_id":
        return Study.patient_id == value
    if kind == "study_uid":
        return Study.study_instance_uid.in_([uid.strip() for uid in value.split(",") if uid.strip()])
    ranks = [rank for rank, name in PRIORITY.items() if name == value.upper()]
    if not ranks:
        raise InvalidUpsRequest("ScheduledProcedureStepPriority is HIGH, MEDIUM or LOW")
    return Study.clinical_priority == ranks[0]


def _state_condition(value: str) -> ColumnElement[bool]:
    state = value.upper()
    if state not in STATES:
        raise InvalidUpsRequest(f"ProcedureStepState is one of {', '.join(STATES)}")
    if state == COMPLETED:
        return Study.reported_at.is_not(None)
    if state == IN_PROGRESS:
        return Study.reported_at.is_(None) & Study.claimed_by.is_not(None)
    if state == SCHEDULED:
        return Study.reported_at.is_(None) & Study.claimed_by.is_(None)
    return Study.id.is_(None)  # CANCELED: never shown


# --- the workitem ----------------------------------------------------------------------


def workitem(study: Study, url: UrlFor) -> dict[str, Any]:
    """The study's reading task as DICOM JSON (PS3.4 Table CC.2.5-3 attributes)."""
    ds = Dataset()
    ds.SOPClassUID = UPS_PUSH
    ds.SOPInstanceUID = workitem_uid(study)
    ds.PatientName = study.patient_name or ""
    ds.PatientID = study.patient_id or ""
    ds.StudyInstanceUID = study.study_instance_uid
    ds.ProcedureStepState = state_of(study)
    ds.ScheduledProcedureStepPriority = PRIORITY.get(study.clinical_priority, "MEDIUM")
    ds.ProcedureStepLabel = PROCEDURE_STEP_LABEL
    ds.WorklistLabel = WORKLIST_LABEL
    ds.ScheduledProcedureStepStartDateTime = as_utc(study.received_at).strftime("%Y%m%d%H%M%S+0000")
    ds.InputReadinessState = "INCOMPLETE" if study.status is StudyStatus.pending else "READY"
    ds.CommentsOnTheScheduledProcedureStep = _ai_text(study)
    request = Dataset()
    request.StudyInstanceUID = study.study_instance_uid
    request.AccessionNumber = study.accession_number or ""
    ds.ReferencedRequestSequence = [request]
    retrieval = Dataset()
    retrieval.RetrieveURL = url(study.study_instance_uid)
    source = Dataset()
    source.TypeOfInstances = "DICOM"
    source.StudyInstanceUID = study.study_instance_uid
    source.WADORSRetrievalSequence = [retrieval]
    ds.InputInformationSequence = [source]
    progress = _progress_text(study)
    if progress is not None:
        item = Dataset()
        item.ProcedureStepProgressDescription = progress
        ds.ProcedureStepProgressInformationSequence = [item]
    json_dict: dict[str, Any] = ds.to_json_dict()
    return json_dict


def _ai_text(study: Study) -> str:
    if study.predicted_label is None or study.triage_score is None:
        return "AI triage: no result yet. Research use only."
    return f"AI triage: {study.predicted_label}, tumour score {study.triage_score:.2f}. Research use only."


def _progress_text(study: Study) -> str | None:
    if study.reported_at is not None:
        return f"Reported by {study.reported_by}"
    if study.claimed_by is not None:
        return f"Claimed by {study.claimed_by}"
    return None


# --- Change Workitem State -------------------------------------------------------------


def parse_state_request(body: object) -> tuple[str, str | None]:
    """(requested state, Transaction UID) from a DICOM JSON body."""
    if not isinstance(body, dict):
        raise InvalidUpsRequest("the body must be a DICOM JSON object")
    state = _single_value(body, STATE_TAG, "ProcedureStepState")
    if state is None or state not in STATES:
        raise InvalidUpsRequest(f"ProcedureStepState (0074,1000) must be one of {', '.join(STATES)}")
    return state, _single_value(body, TRANSACTION_TAG, "TransactionUID")


def _single_value(body: dict[str, Any], tag: str, keyword: str) -> str | None:
    element = body.get(tag)
    if element is None:
        return None
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str) or not values[0]:
        raise InvalidUpsRequest(f"{keyword} ({tag[:4]},{tag[4:]}) must hold one string value")
    return values[0]


def change_state(db: Session, principal: Principal, study: Study, state: str, transaction_uid: str | None) -> str:
    """Apply the state change to the locked study; the audit action it amounts to."""
    current = state_of(study)
    if state == SCHEDULED:
        raise InvalidTransition("a workitem becomes SCHEDULED only when created [C303]")
    if transaction_uid is None:
        raise WrongTransactionUid("the Transaction UID (0008,1195) is required [C301]")
    if current == COMPLETED:
        raise WorkitemStateConflict("the workitem is COMPLETED and may no longer be updated [C300]")
    if state == IN_PROGRESS:
        if current == IN_PROGRESS:
            raise WorkitemStateConflict("the workitem is already IN PROGRESS [C302]")
        claims.claim(db, principal, study, transaction_uid=transaction_uid)
        return "claim"
    if current == SCHEDULED:
        raise InvalidTransition(f"a SCHEDULED workitem cannot become {state}; claim it first [C310]")
    if transaction_uid != study.claim_transaction_uid:
        raise WrongTransactionUid("the Transaction UID does not match the workitem's [C301]")
    if state == COMPLETED:
        claims.mark_reported(study, principal.token_name)
        db.flush()
        return "report"
    claims.clear_claim(study)
    db.flush()
    return "release"
