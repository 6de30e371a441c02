"""The reconciler runs while a backlog waits: a worker killed mid-job has its job re-queued
within one reconcile interval plus the deadline, long before the queue drains.

Real processes on PostgreSQL + Redis: the API (uploads), ``sightline beat`` (the reconciler,
run in-process by ``worker.beat.LocalScheduler``) and Celery workers. Before, the reconcile
message waited in the ``analysis`` queue behind the backlog and expired there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import bearer, issue_token, make_mr_dicom
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from stack import ServiceProcess, StartProcess, beat_argv, free_port

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, JobStatus, Role
from service.settings import Settings

pytestmark = pytest.mark.integration

BACKLOG = 30
DEADLINE_S = 8  # above one job's run time on a loaded machine, or live jobs look stuck
INTERVAL_S = 2
SLACK_S = 4.0  # polling, process scheduling on a loaded 2-core machine
WAIT_S = 600.0


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
    return value


def jobs(settings: Settings) -> dict[uuid.UUID, AnalysisJob]:
    with unit_of_work(settings) as db:
        return {job.id: job for job in db.scalars(select(AnalysisJob))}


def queued_count(settings: Settings) -> int:
    with unit_of_work(settings) as db:
        return int(db.scalar(select(func.count()).where(AnalysisJob.status == JobStatus.queued)) or 0)


def beat_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_killed_workers_job_is_requeued_while_the_backlog_is_processed(
    pg_settings: Settings,
    stack_env: dict[str, str],
    api_url: str,
    start_process: StartProcess,
    start_worker: Callable[[str, dict[str, str]], ServiceProcess],
    tmp_path: Path,
) -> None:
    beat_port = free_port()
    env = {
        **stack_env,
        "SIGHTLINE_JOB_DEADLINE_SECONDS": str(DEADLINE_S),
        "SIGHTLINE_RECONCILE_INTERVAL_SECONDS": str(INTERVAL_S),
        "SIGHTLINE_WORKER_METRICS_PORT": "0",
        "SIGHTLINE_BEAT_METRICS_PORT": str(beat_port),
    }
    start_process("beat", beat_argv(tmp_path / "celerybeat-schedule"), env).wait_for_log("beat: Starting")
    worker_a = start_worker("wA", env)
    ingest = issue_token(pg_settings, Role.ingest)
    files = [("files", (f"s{i}.dcm", make_mr_dicom(size=256, seed=i), "application/dicom")) for i in range(BACKLOG)]
    response = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=bearer(ingest), timeout=120)
    assert response.status_code == 202, response.text

    def running() -> AnalysisJob | None:
        return next((j for j in jobs(pg_settings).values() if j.status is JobStatus.running), None)

    wait_until(running, "worker A to start a job", every_s=0.02)
    worker_a.kill()
    victim = running()
    assert victim is not None and victim.started_at is not None and victim.attempts == 1
    start_worker("wB", env)

    def requeued() -> AnalysisJob | None:
        job = jobs(pg_settings)[victim.id]
        return job if job.attempts >= 2 or job.status is JobStatus.queued else None

    wait_until(requeued, "the reconciler to re-queue the killed worker's job", timeout_s=120, every_s=0.1)
    seen_at = time.time()
    backlog_left = queued_count(pg_settings)
    assert seen_at - victim.started_at.timestamp() <= DEADLINE_S + INTERVAL_S + SLACK_S
    assert backlog_left >= 5, f"the backlog had drained ({backlog_left} queued): the test proves nothing"

    samples = beat_samples(beat_port)
    assert samples[("sightline_maintenance_runs_total", (("outcome", "ok"), ("task", "sightline.reconcile")))] >= 1
    assert ("sightline_queue_depth", (("source", "database"),)) in samples
    assert ("sightline_queue_depth", (("source", "broker"),)) in samples

    def all_ended() -> bool:
        rows = jobs(pg_settings).values()
        return len(rows) == BACKLOG and all(j.status in (JobStatus.succeeded, JobStatus.failed) for j in rows)

    wait_until(all_ended, "the backlog to be processed", every_s=0.5)
    finished = jobs(pg_settings)[victim.id]
    assert finished.status is JobStatus.succeeded and finished.attempts >= 2
    assert finished.worker is not None and finished.worker.startswith("wB@")
