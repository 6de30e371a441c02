"""The reconciler on the embedded backend: stuck jobs are re-sent through the real broker, or failed."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from helpers import make_mr_dicom
from sqlalchemy import func, select

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AnalysisResult, JobStatus, Study, StudyStatus, utcnow
from service.queue import ANALYSE_TASK
from service.settings import Settings
from worker.pipeline import Outcome, analyse_job
from worker.reconcile import reconcile_jobs


def set_job(settings: Settings, job_id: uuid.UUID, **values: object) -> None:
    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, job_id)
        for name, value in values.items():
            setattr(job, name, value)


def get_job(settings: Settings, job_id: uuid.UUID) -> AnalysisJob:
    with unit_of_work(settings) as db:
        return db.get_one(AnalysisJob, job_id)


def ago(settings: Settings, extra_s: float) -> datetime:
    return utcnow() - timedelta(seconds=settings.job_deadline_seconds + extra_s)


def test_stale_running_job_is_requeued_and_resent(settings, make_job, drain_analysis_queue) -> None:
    stored = make_job(make_mr_dicom())
    set_job(settings, stored.job_id, status=JobStatus.running, attempts=1, started_at=ago(settings, 5))
    before = utcnow()

    report = reconcile_jobs(settings)

    assert report.as_dict() == {"requeued": 1, "failed": 0}
    job = get_job(settings, stored.job_id)
    assert (job.status, job.attempts) == (JobStatus.queued, 1)
    assert job.enqueued_at is not None and job.enqueued_at.replace(tzinfo=None) >= before.replace(tzinfo=None)
    assert drain_analysis_queue() == [(ANALYSE_TASK, [str(stored.job_id)])]


def test_requeued_job_runs_again_as_a_second_attempt(settings, classifier, make_job) -> None:
    stored = make_job(make_mr_dicom())
    set_job(settings, stored.job_id, status=JobStatus.running, attempts=1, started_at=ago(settings, 5))
    reconcile_jobs(settings)

    assert analyse_job(stored.job_id, settings=settings, classifier=classifier, worker_name="b") is Outcome.succeeded

    job = get_job(settings, stored.job_id)
    assert (job.status, job.attempts, job.worker) == (JobStatus.succeeded, 2, "b")
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(AnalysisResult)) == 1


def test_stale_running_job_out_of_attempts_is_failed(settings, make_job, drain_analysis_queue) -> None:
    stored = make_job(make_mr_dicom())
    attempts = settings.job_max_attempts
    set_job(settings, stored.job_id, status=JobStatus.running, attempts=attempts, started_at=ago(settings, 5))

    assert reconcile_jobs(settings).as_dict() == {"requeued": 0, "failed": 1}

    job = get_job(settings, stored.job_id)
    assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "retries_exhausted", attempts)
    assert job.finished_at is not None
    with unit_of_work(settings) as db:
        assert db.get_one(Study, stored.study_id).status is StudyStatus.failed
    assert drain_analysis_queue() == []


def test_queued_job_whose_message_was_lost_is_resent(settings, make_job, drain_analysis_queue) -> None:
    old = make_job(make_mr_dicom(seed=1))
    never_sent = make_job(make_mr_dicom(seed=2))
    set_job(settings, old.job_id, enqueued_at=ago(settings, 1))
    set_job(settings, never_sent.job_id, enqueued_at=None, created_at=ago(settings, 1))

    assert reconcile_jobs(settings).as_dict() == {"requeued": 2, "failed": 0}

    sent = sorted(args[0] for _, args in drain_analysis_queue())
    assert sent == sorted([str(old.job_id), str(never_sent.job_id)])
    assert get_job(settings, never_sent.job_id).enqueued_at is not None


def test_fresh_and_finished_jobs_are_left_alone(settings, make_job, drain_analysis_queue) -> None:
    queued = make_job(make_mr_dicom(seed=1))
    running = make_job(make_mr_dicom(seed=2))
    unsent = make_job(make_mr_dicom(seed=3))
    finished = make_job(make_mr_dicom(seed=4))
    set_job(settings, running.job_id, status=JobStatus.running, attempts=1, started_at=utcnow())
    set_job(settings, unsent.job_id, enqueued_at=None)
    set_job(settings, finished.job_id, status=JobStatus.succeeded, attempts=1, started_at=ago(settings, 60))

    assert reconcile_jobs(settings).as_dict() == {"requeued": 0, "failed": 0}

    assert get_job(settings, queued.job_id).status is JobStatus.queued
    assert get_job(settings, running.job_id).status is JobStatus.running
    assert get_job(settings, finished.job_id).status is JobStatus.succeeded
    assert drain_analysis_queue() == []
