"""The whole flow on real parts: uvicorn API, PostgreSQL, Redis and real Celery workers.

Upload DICOMs -> jobs queued -> a worker analyses them -> the worklist shows them triaged.
Then a worker is killed mid-job: the reconciler re-sends the job and a second worker
finishes it, with exactly one result.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import httpx
import numpy as np
import pytest
from helpers import bearer, issue_token, make_mr_dicom
from sqlalchemy import func, select

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AnalysisResult, JobStatus, Role
from service.queue import ANALYSE_TASK, ANALYSIS_QUEUE, RECONCILE_TASK, publisher
from service.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 120.0
DEADLINE_S = 5


class LoggingProcess(Protocol):
    def log_text(self) -> str: ...


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
    return value


def upload(api_url: str, token: str, dicoms: list[bytes]) -> list[dict[str, Any]]:
    files = [("files", (f"slice{i}.dcm", data, "application/dicom")) for i, data in enumerate(dicoms)]
    response = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=bearer(token), timeout=30)
    assert response.status_code == 202, response.text
    instances: list[dict[str, Any]] = response.json()["instances"]
    return instances


def job_rows(settings: Settings) -> dict[uuid.UUID, AnalysisJob]:
    with unit_of_work(settings) as db:
        return {job.id: job for job in db.scalars(select(AnalysisJob))}


def all_jobs_ended(settings: Settings, count: int) -> bool:
    jobs = job_rows(settings).values()
    return len(jobs) == count and all(j.status in (JobStatus.succeeded, JobStatus.failed) for j in jobs)


def test_uploaded_studies_are_analysed_and_triaged(pg_settings, stack_env, api_url, start_worker) -> None:
    start_worker("w1", stack_env)
    ingest, reader = issue_token(pg_settings, Role.ingest), issue_token(pg_settings, Role.reader)
    dicoms = [
        make_mr_dicom(size=160, lesion=None, seed=1),
        make_mr_dicom(size=160, lesion=(60, 70, 22), seed=2),
        make_mr_dicom(size=160, lesion=(100, 60, 12), seed=3),
    ]
    uploaded = upload(api_url, ingest, dicoms)
    study_uids = {item["study_instance_uid"] for item in uploaded}

    def analysed_rows() -> list[dict[str, Any]] | None:
        page = httpx.get(f"{api_url}/api/v1/worklist", headers=bearer(reader), timeout=10).json()
        rows = [row for row in page["items"] if row["study_instance_uid"] in study_uids]
        done = len(rows) == 3 and all(row["status"] == "analysed" for row in rows)
        return rows if done else None

    rows = wait_until(analysed_rows, "three analysed studies on the worklist")

    scores = [row["triage_score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    jobs = job_rows(pg_settings).values()
    assert {(j.status, j.attempts) for j in jobs} == {(JobStatus.succeeded, 1)}
    assert all(j.worker is not None and j.worker.startswith("w1@") for j in jobs)
    key_sop = rows[0]["key_instance_sop_uid"]
    response = httpx.get(f"{api_url}/api/v1/instances/{key_sop}/overlay.png", headers=bearer(reader), timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    overlay = cv2.imdecode(np.frombuffer(response.content, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert overlay is not None and overlay.shape == (160, 160, 3)


def test_job_of_a_killed_worker_is_finished_by_another(pg_settings, stack_env, api_url, start_worker) -> None:
    env = {**stack_env, "SIGHTLINE_JOB_DEADLINE_SECONDS": str(DEADLINE_S)}
    worker_a = start_worker("wA", env)
    ingest = issue_token(pg_settings, Role.ingest)
    # Large slices so each job runs for a while; with three of them, one is surely caught running.
    upload(api_url, ingest, [make_mr_dicom(size=1536, seed=i) for i in range(3)])

    def running_job() -> AnalysisJob | None:
        return next((j for j in job_rows(pg_settings).values() if j.status is JobStatus.running), None)

    wait_until(running_job, "worker A to start a job", every_s=0.02)
    worker_a.kill()
    victim = running_job()
    assert victim is not None and victim.attempts == 1 and victim.worker is not None
    assert victim.worker.startswith("wA@")

    worker_b = start_worker("wB", env)
    stale_at = victim.started_at.timestamp() + DEADLINE_S + 0.5 if victim.started_at else 0.0
    time.sleep(max(0.0, stale_at - time.time()))
    publisher(pg_settings.broker_url).send_task(RECONCILE_TASK, queue=ANALYSIS_QUEUE)
    wait_until(lambda: all_jobs_ended(pg_settings, 3), "every job to end")

    finished = job_rows(pg_settings)[victim.id]
    assert (finished.status, finished.attempts) == (JobStatus.succeeded, 2)
    assert finished.worker is not None and finished.worker.startswith("wB@")
    with unit_of_work(pg_settings) as db:
        assert db.scalar(select(func.count()).where(AnalysisResult.job_id == victim.id)) == 1
        assert db.scalar(select(func.count()).select_from(AnalysisResult)) == 3
    assert_duplicate_message_is_ignored(pg_settings, worker_b, victim.id)


def assert_duplicate_message_is_ignored(settings: Settings, worker: LoggingProcess, job_id: uuid.UUID) -> None:
    """Redis may re-deliver the killed worker's message too; it must converge on the same result."""
    publisher(settings.broker_url).send_task(ANALYSE_TASK, args=[str(job_id)], queue=ANALYSIS_QUEUE)

    def skipped() -> bool:
        lines = worker.log_text().splitlines()
        return any("duplicate delivery ignored" in line and str(job_id) in line for line in lines)

    wait_until(skipped, "the worker to ignore the duplicate message", timeout_s=30)
    job = job_rows(settings)[job_id]
    assert (job.status, job.attempts) == (JobStatus.succeeded, 2)
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).where(AnalysisResult.job_id == job_id)) == 1
