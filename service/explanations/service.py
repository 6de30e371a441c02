"""Ask for, find and serve on-demand explanations. Functions flush; the request commits.

A request names an instance (its id, or its SOP Instance UID), a method, a label and
optionally a frame (default: the analysis's key frame); the active model explains it, and
its worker (the model's own queue, ``service.queue.analysis_queue``) computes it. Its key (instance, frame, model
name and version, method, label) is unique: the first request inserts the row and sends
``sightline.explain`` after the commit; every later one finds the same row. A failed row
asked for again is queued again (its attempts start afresh).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.manifest import ModelManifest
from service.active_model import ModelKey, latest_result
from service.db.session import begin_write
from service.db.tables import (
    AnalysisJob,
    AnalysisResult,
    ExplanationStatus,
    Instance,
    JobStatus,
    OnDemandExplanation,
    utcnow,
)
from service.deps import Principal
from service.errors import Conflict, NotFound, UnprocessableInput
from service.explanations.schemas import ExplanationCreate, ExplanationImageKind
from service.queue import analysis_queue, send_explanations_after_commit
from service.settings import Settings
from service.storage import BlobStore


class InstanceNotFound(NotFound):
    code = "instance_not_found"


class ExplanationNotFound(NotFound):
    code = "explanation_not_found"


class ExplanationNotReady(NotFound):
    code = "explanation_not_ready"


class ImageMissing(NotFound):
    code = "image_missing"


class UnknownLabel(UnprocessableInput):
    code = "unknown_label"


class FrameOutOfRange(UnprocessableInput):
    code = "frame_out_of_range"


class InstanceNotApplicable(Conflict):
    code = "instance_not_applicable"


class AnalysisFailed(Conflict):
    code = "analysis_failed"


class AnalysisNotFinished(Conflict):
    code = "analysis_not_finished"


@dataclass(frozen=True)
class Requested:
    row: OnDemandExplanation
    sop_instance_uid: str
    queued_now: bool  # inserted or re-queued by this request (a message is sent after the commit)


def find_instance(db: Session, instance_ref: str) -> Instance:
    """By id (a UUID, as the upload answer gives it) or by SOP Instance UID (as the study view does)."""
    try:
        condition = Instance.id == uuid.UUID(instance_ref)
    except ValueError:
        condition = Instance.sop_instance_uid == instance_ref
    instance = db.scalar(select(Instance).where(condition))
    if instance is None:
        raise InstanceNotFound("no instance with this id or SOP Instance UID")
    return instance


def finished_result(db: Session, instance: Instance, model: ModelKey) -> AnalysisResult:
    """The instance's latest result of ``model``; 409 with the reason when there is none."""
    if instance.not_applicable_reason is not None:
        raise InstanceNotApplicable("the model does not score this instance, so it cannot explain it")
    result = latest_result(db, instance.id, model)
    if result is not None:
        return result
    failed = db.scalar(
        select(AnalysisJob.id).where(
            AnalysisJob.instance_id == instance.id,
            AnalysisJob.model_name == model.name,
            AnalysisJob.model_version == model.version,
            AnalysisJob.status == JobStatus.failed,
        )
    )
    if failed is not None:
        raise AnalysisFailed("the analysis of this instance failed; there is nothing to explain")
    raise AnalysisNotFinished("the instance is not analysed yet; ask again once its result is shown")


def request_explanation(
    db: Session,
    settings: Settings,
    manifest: ModelManifest,
    reader: Principal,
    instance_ref: str,
    body: ExplanationCreate,
) -> Requested:
    instance = find_instance(db, instance_ref)
    if body.target_label not in manifest.labels:
        raise UnknownLabel(f"target_label must be one of {manifest.labels}")
    model = ModelKey(manifest.name, manifest.version)
    result = finished_result(db, instance, model)
    frame = result.key_frame if body.frame is None else body.frame
    if frame >= instance.frame_count:
        raise FrameOutOfRange(f"frame must be within 0..{instance.frame_count - 1}")
    key = {
        "instance_id": instance.id,
        "frame_index": frame,
        "model_name": manifest.name,
        "model_version": manifest.version,
        "method": body.method,
        "target_label": body.target_label,
    }
    begin_write(db)  # SQLite has no row locks: take its write lock before the insert-or-find
    inserted = _insert_if_new(db, key, model_sha256=manifest.sha256, requested_by=reader.token_name)
    row = db.scalars(
        select(OnDemandExplanation).filter_by(**key).with_for_update().execution_options(populate_existing=True)
    ).one()
    requeued = row.status is ExplanationStatus.failed
    if requeued:
        _requeue(row)
        db.flush()
    if inserted or requeued:
        send_explanations_after_commit(db, {row.id: analysis_queue(model, settings)}, settings)
    return Requested(row, instance.sop_instance_uid, inserted or requeued)


def _insert_if_new(db: Session, key: dict[str, object], *, model_sha256: str, requested_by: str) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING``: two requests at once make one row."""
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = {
        **key,
        "id": uuid.uuid4(),
        "model_sha256": model_sha256,
        "status": ExplanationStatus.queued,
        "attempts": 0,
        "requested_by": requested_by[:128],
        "created_at": utcnow(),
        "enqueued_at": utcnow(),
    }
    statement = insert(OnDemandExplanation).values(**values).on_conflict_do_nothing(index_elements=list(key))
    # RETURNING, not rowcount: psycopg answers -1 for INSERT ... ON CONFLICT DO NOTHING.
    return db.scalar(statement.returning(OnDemandExplanation.id)) is not None


def _requeue(row: OnDemandExplanation) -> None:
    row.status, row.attempts, row.enqueued_at = ExplanationStatus.queued, 0, utcnow()
    row.error_code = row.error_message = row.finished_at = row.started_at = None


def get_explanation(db: Session, explanation_id: uuid.UUID) -> tuple[OnDemandExplanation, str]:
    """The row and its instance's SOP Instance UID."""
    found = db.execute(
        select(OnDemandExplanation, Instance.sop_instance_uid)
        .join(Instance, Instance.id == OnDemandExplanation.instance_id)
        .where(OnDemandExplanation.id == explanation_id)
    ).one_or_none()
    if found is None:
        raise ExplanationNotFound("no explanation with this id")
    return found[0], found[1]


def list_explanations(db: Session, instance_ref: str) -> tuple[list[OnDemandExplanation], str]:
    instance = find_instance(db, instance_ref)
    rows = db.scalars(
        select(OnDemandExplanation)
        .where(OnDemandExplanation.instance_id == instance.id)
        .order_by(OnDemandExplanation.created_at, OnDemandExplanation.id)
    )
    return list(rows), instance.sop_instance_uid


def image_key(row: OnDemandExplanation, kind: ExplanationImageKind) -> str:
    """The blob key of picture ``kind``; 404 ``explanation_not_ready`` until the row is done."""
    keys = {
        ExplanationImageKind.heatmap: row.heatmap_key,
        ExplanationImageKind.overlay: row.overlay_key,
        ExplanationImageKind.contour: row.contour_key,
        ExplanationImageKind.map: row.map_key,
        ExplanationImageKind.outline: row.outline_key,
    }
    key = keys[kind]
    if row.status is not ExplanationStatus.done or key is None:
        raise ExplanationNotReady(f"the explanation is {row.status.value}; its images exist once it is done")
    return key


def image_bytes(store: BlobStore, key: str) -> bytes:
    try:
        return store.get(key)
    except FileNotFoundError:
        raise ImageMissing("the stored file of this image is missing") from None
