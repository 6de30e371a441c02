"""A study's results as DICOM: the objects of each generation, their deliveries, the turnaround."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from service.db.tables import (
    Delivery,
    DeliveryStatus,
    ResultKind,
    ResultObject,
    Study,
    as_utc,
    utcnow,
)
from service.errors import NotFound
from service.worklist.service import StudyNotFound


class ResultObjectNotFound(NotFound):
    code = "result_object_not_found"


class DeliveryView(BaseModel):
    destination: str
    status: DeliveryStatus
    attempts: int
    last_status: str | None = Field(description='The last answer, e.g. "0x0000" (C-STORE) or "HTTP 200" (STOW-RS)')
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending only)")
    delivered_at: datetime | None


class ResultObjectView(BaseModel):
    kind: ResultKind = Field(description="sr: TID 1500 report, sc: overlay secondary capture, pr: presentation state")
    generation: int
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    size: int
    created_at: datetime
    url: str = Field(description="The object as application/dicom")
    deliveries: list[DeliveryView]


class StudyResults(BaseModel):
    generation: int = Field(description="The current generation; 0 before any result object")
    results_due: bool = Field(description="The study settled and its objects are being built")
    results_delivered_at: datetime | None
    turnaround_seconds: float | None = Field(
        description="From the study's last instance received to its current objects stored at every destination"
    )
    objects: list[ResultObjectView] = Field(description="Newest generation first")


def study_results(db: Session, study_uid: str, object_url: Callable[[str], str]) -> StudyResults:
    study = _study(db, study_uid)
    objects = db.scalars(
        select(ResultObject)
        .where(ResultObject.study_id == study.id)
        .options(selectinload(ResultObject.deliveries))
        .order_by(ResultObject.generation.desc(), ResultObject.kind)
    )
    return StudyResults(
        generation=study.results_generation,
        results_due=study.results_due_at is not None,
        results_delivered_at=as_utc(study.results_delivered_at) if study.results_delivered_at else None,
        turnaround_seconds=study.turnaround_seconds,
        objects=[_object_view(obj, object_url) for obj in objects],
    )


def result_object(db: Session, sop_uid: str) -> ResultObject:
    obj = db.scalar(select(ResultObject).where(ResultObject.sop_instance_uid == sop_uid))
    if obj is None:
        raise ResultObjectNotFound("no result object with this SOP Instance UID")
    return obj


def redeliver(db: Session, study_uid: str) -> int:
    """Failed deliveries of the current generation go back to pending with fresh attempts."""
    study = _study(db, study_uid)
    current = select(ResultObject.id).where(
        ResultObject.study_id == study.id, ResultObject.generation == study.results_generation
    )
    result = db.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.failed, Delivery.result_object_id.in_(current))
        .values(status=DeliveryStatus.pending, attempts=0, next_attempt_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _study(db: Session, study_uid: str) -> Study:
    study = db.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise StudyNotFound("no study with this Study Instance UID")
    return study


def _object_view(obj: ResultObject, object_url: Callable[[str], str]) -> ResultObjectView:
    return ResultObjectView(
        kind=obj.kind,
        generation=obj.generation,
        sop_class_uid=obj.sop_class_uid,
        sop_instance_uid=obj.sop_instance_uid,
        series_instance_uid=obj.series_instance_uid,
        size=obj.blob_size,
        created_at=as_utc(obj.created_at),
        url=object_url(obj.sop_instance_uid),
        deliveries=[_delivery_view(d) for d in sorted(obj.deliveries, key=lambda d: d.destination)],
    )


def _delivery_view(delivery: Delivery) -> DeliveryView:
    pending = delivery.status == DeliveryStatus.pending
    return DeliveryView(
        destination=delivery.destination,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        next_attempt_at=as_utc(delivery.next_attempt_at) if pending else None,
        delivered_at=as_utc(delivery.delivered_at) if delivery.delivered_at else None,
    )
