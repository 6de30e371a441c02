"""The Celery tasks themselves, run in-process with ``apply()`` (retries included) and
configured the way a worker is: through ``SIGHTLINE_`` environment variables."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import make_mr_dicom

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, JobStatus, utcnow
from service.settings import Settings, get_settings
from service.storage import BlobStore
from worker.tasks import analyse_instance, reconcile


@pytest.fixture()
def worker_env(settings: Settings, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Point ``get_settings()`` (what the tasks read) at this test's database, broker and store."""
    values = {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "STORAGE_DIR": str(settings.storage_dir),
        "MODEL_CACHE_DIR": str(model_cache_dir),
        "JOB_MAX_ATTEMPTS": "2",
        "LOG_JSON": "false",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"SIGHTLINE_{name}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def job_row(settings: Settings, job_id: object) -> AnalysisJob:
    with unit_of_work(settings) as db:
        return db.get_one(AnalysisJob, job_id)


def test_analyse_task_runs_the_job(worker_env, make_job) -> None:
    stored = make_job(make_mr_dicom())

    assert analyse_instance.apply(args=[str(stored.job_id)]).get() == "succeeded"

    job = job_row(worker_env, stored.job_id)
    assert (job.status, job.attempts, job.worker) == (JobStatus.succeeded, 1, socket.gethostname())


def test_analyse_task_retries_a_transient_error_until_attempts_run_out(worker_env, make_job) -> None:
    stored = make_job(make_mr_dicom())
    path = BlobStore(worker_env.storage_dir).path_for(stored.blob_key)
    path.unlink()
    path.mkdir()  # reading it raises IsADirectoryError: an OSError, so transient

    assert analyse_instance.apply(args=[str(stored.job_id)]).get() == "failed"

    job = job_row(worker_env, stored.job_id)
    assert (job.status, job.attempts, job.error_code) == (JobStatus.failed, 2, "retries_exhausted")


def test_analyse_task_drops_a_malformed_job_id(worker_env) -> None:
    assert analyse_instance.apply(args=["not-a-uuid"]).get() == "skipped"


def test_reconcile_task_reports_its_counts(worker_env, make_job) -> None:
    stored = make_job(make_mr_dicom())
    with unit_of_work(worker_env) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        job.status, job.attempts = JobStatus.running, 1
        job.started_at = utcnow() - timedelta(seconds=worker_env.job_deadline_seconds + 1)

    assert reconcile.apply().get() == {"requeued": 1, "failed": 0}
