"""The reconciler: jobs the broker forgot or whose worker died are sent again, or failed.

The job row is the truth (DESIGN.md, "The flow"). A job queued longer than the deadline
lost its message; a job running longer than the deadline lost its worker. Either is
re-queued and re-sent after the commit, unless it has used all its attempts.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select

from service.active_model import ModelKey
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, utcnow
from service.metrics import JOB_FAILURES
from service.queue import analysis_queue, enqueue_after_commit
from service.settings import Settings
from worker.jobs import RETRIES_EXHAUSTED, deadline_cutoff
from worker.series import settle_study

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(frozen=True)
class ReconcileReport:
    requeued: int
    failed: int

    def as_dict(self) -> dict[str, int]:
        return {"requeued": self.requeued, "failed": self.failed}


def stuck_jobs(cutoff: datetime) -> ColumnElement[bool]:
    """Queued without a message for too long, or running without a live worker for too long."""
    queued_since = or_(
        AnalysisJob.enqueued_at < cutoff,
        and_(AnalysisJob.enqueued_at.is_(None), AnalysisJob.created_at < cutoff),
    )
    return or_(
        and_(AnalysisJob.status == JobStatus.queued, queued_since),
        and_(AnalysisJob.status == JobStatus.running, AnalysisJob.started_at < cutoff),
    )


def reconcile_jobs(settings: Settings, *, now: datetime | None = None) -> ReconcileReport:
    """Re-queue or fail every stuck job (one batch); several reconcilers may run at once."""
    now = now or utcnow()
    with unit_of_work(settings) as db:
        rows = db.execute(
            select(AnalysisJob, Instance.study_id)
            .join(Instance, AnalysisJob.instance_id == Instance.id)
            .where(stuck_jobs(deadline_cutoff(settings, now)))
            .order_by(AnalysisJob.created_at)
            .limit(BATCH_SIZE)
            .with_for_update(skip_locked=True, of=AnalysisJob)
        ).all()
        requeue: list[uuid.UUID] = []
        queues: dict[uuid.UUID, str] = {}
        failed_studies: set[uuid.UUID] = set()
        for job, study_id in rows:
            if job.attempts >= settings.job_max_attempts:
                _fail_exhausted(job, now)
                failed_studies.add(study_id)
            else:
                job.status, job.enqueued_at = JobStatus.queued, now
                requeue.append(job.id)
                queues[job.id] = analysis_queue(ModelKey(job.model_name, job.model_version), settings)
        db.flush()
        for study_id in sorted(failed_studies):
            settle_study(db, study_id, settings)
        enqueue_after_commit(db, requeue, settings, queues=queues)  # each to its model's queue
    report = ReconcileReport(requeued=len(requeue), failed=len(rows) - len(requeue))
    if rows:
        logger.warning("stuck jobs reconciled", extra=report.as_dict())
    return report


def _fail_exhausted(job: AnalysisJob, now: datetime) -> None:
    job.status = JobStatus.failed
    job.error_code = RETRIES_EXHAUSTED
    job.error_message = f"no result after {job.attempts} attempts"
    job.finished_at = now
    JOB_FAILURES.labels(code=RETRIES_EXHAUSTED).inc()
    logger.warning("job failed: attempts exhausted", extra={"job_id": str(job.id), "attempts": job.attempts})
