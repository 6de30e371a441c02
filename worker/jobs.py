"""State changes of one analysis job row, each guarded so that a job has one owner.

A worker owns a job from the moment its claim moves the row to ``running`` (and bumps
``attempts``) until it ends the job. Every later write checks that the row still says
``running`` with the same ``attempts``: if the reconciler re-queued the job meanwhile, or
another worker claimed it, the write matches no row and the stale worker backs off.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from service.active_model import ModelKey, worker_model
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, utcnow
from service.metrics import JOB_FAILURES
from service.settings import Settings
from worker.series import settle_study

logger = logging.getLogger(__name__)

RETRIES_EXHAUSTED = "retries_exhausted"
MAX_ERROR_MESSAGE = 500


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one job, read in the claiming transaction."""

    job_id: uuid.UUID
    attempts: int
    instance_id: uuid.UUID
    series_id: uuid.UUID
    study_id: uuid.UUID
    blob_key: str

    def log_ids(self) -> dict[str, str]:
        return {"job_id": str(self.job_id), "instance_id": str(self.instance_id), "study_id": str(self.study_id)}


def claim_job(
    settings: Settings, job_id: uuid.UUID, worker_name: str, *, model: ModelKey | None = None
) -> ClaimedJob | None:
    """Take the job if it is queued, or running past the deadline (its worker died), and is a
    job of ``model`` (default: ``worker_model(settings)``), the model this worker runs.

    Returns ``None`` for a duplicate delivery (the job is finished, or alive elsewhere) and for
    another model's job: a message that reached the wrong queue is dropped, never run with
    the wrong model; the reconciler sends the job again to its own queue.
    """
    now = utcnow()
    model = model or worker_model(settings)
    claimable = and_(
        AnalysisJob.model_name == model.name,
        AnalysisJob.model_version == model.version,
        or_(
            AnalysisJob.status == JobStatus.queued,
            and_(AnalysisJob.status == JobStatus.running, AnalysisJob.started_at < deadline_cutoff(settings, now)),
        ),
    )
    with unit_of_work(settings) as db:
        attempts = db.scalar(
            update(AnalysisJob)
            .where(AnalysisJob.id == job_id, claimable)
            .values(status=JobStatus.running, attempts=AnalysisJob.attempts + 1, started_at=now, worker=worker_name)
            .returning(AnalysisJob.attempts)
            .execution_options(synchronize_session=False)
        )
        if attempts is None:
            return None
        instance = db.execute(
            select(Instance.id, Instance.series_id, Instance.study_id, Instance.blob_key)
            .join(AnalysisJob, AnalysisJob.instance_id == Instance.id)
            .where(AnalysisJob.id == job_id)
        ).one()
    return ClaimedJob(job_id, attempts, instance.id, instance.series_id, instance.study_id, instance.blob_key)


def end_if_owned(
    db: Session, claim: ClaimedJob, status: JobStatus, *, code: str | None = None, message: str | None = None
) -> bool:
    """Move the job to ``status`` only if this claim still owns it; the row stays locked until commit."""
    ended = db.scalar(
        update(AnalysisJob)
        .where(*_owned_by(claim))
        .values(status=status, finished_at=utcnow(), error_code=code, error_message=_clip(message))
        .returning(AnalysisJob.id)
        .execution_options(synchronize_session=False)
    )
    return ended is not None


def fail_job(settings: Settings, claim: ClaimedJob, code: str, message: str) -> bool:
    """End the job as failed (a permanent error, or no attempts left) and re-triage its study."""
    with unit_of_work(settings) as db:
        if not end_if_owned(db, claim, JobStatus.failed, code=code, message=message):
            logger.warning("job no longer ours; failure not recorded", extra=claim.log_ids())
            return False
        settle_study(db, claim.study_id, settings)
    JOB_FAILURES.labels(code=code).inc()
    logger.warning("job failed", extra={**claim.log_ids(), "error_code": code, "attempt": claim.attempts})
    return True


def release_job(settings: Settings, claim: ClaimedJob) -> bool:
    """Give a job back to the queue after a transient error, so its retry can claim it."""
    with unit_of_work(settings) as db:
        released = db.scalar(
            update(AnalysisJob)
            .where(*_owned_by(claim))
            .values(status=JobStatus.queued, enqueued_at=utcnow())
            .returning(AnalysisJob.id)
            .execution_options(synchronize_session=False)
        )
    return released is not None


def _owned_by(claim: ClaimedJob) -> tuple[ColumnElement[bool], ...]:
    """The row still says running with this claim's attempt number: nobody took it over."""
    return (
        AnalysisJob.id == claim.job_id,
        AnalysisJob.status == JobStatus.running,
        AnalysisJob.attempts == claim.attempts,
    )


def deadline_cutoff(settings: Settings, now: datetime) -> datetime:
    return now - timedelta(seconds=settings.job_deadline_seconds)


def _clip(message: str | None) -> str | None:
    if message is None or len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[: MAX_ERROR_MESSAGE - 1] + "…"
