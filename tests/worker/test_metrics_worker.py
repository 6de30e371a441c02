"""A real ``sightline worker`` (prefork pool, two children) serves the job metrics its children
count: after a few jobs its metrics port shows exactly the jobs done, by outcome."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import make_mr_dicom
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from stack import REPO_ROOT, ServiceProcess, free_port

from models.inference import Classifier
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, JobStatus
from service.queue import send_analysis
from service.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 180.0


@pytest.fixture()
def settings(pg_settings: Settings) -> Settings:
    """``make_job`` (tests/worker/conftest.py) stores its rows on PostgreSQL for a real worker."""
    return pg_settings


@pytest.fixture()
def worker_process(
    pg_settings: Settings, classifier: Classifier, model_cache_dir: Path, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "PROMETHEUS_"))}
    env.update(
        {
            "SIGHTLINE_DATABASE_URL": pg_settings.database_url,
            "SIGHTLINE_BROKER_URL": pg_settings.broker_url,
            "SIGHTLINE_STORAGE_DIR": str(pg_settings.storage_dir),
            "SIGHTLINE_MODEL_CACHE_DIR": str(model_cache_dir),
            "SIGHTLINE_ONNX_THREADS": "1",
            "SIGHTLINE_WORKER_METRICS_PORT": str(port),
            "SIGHTLINE_LOG_JSON": "true",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [sys.executable, "-m", "service.cli", "worker", "--concurrency=2", "-n", "metrics@%h", "--without-heartbeat"]
    process = ServiceProcess("worker-metrics", argv, env, tmp_path / "worker.log")
    try:
        process.wait_for_log("ready.", timeout_s=120)
        yield process, port
    finally:
        process.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_worker_serves_the_job_metrics_of_its_pool_children(pg_settings, make_job, worker_process) -> None:
    _, port = worker_process
    good = [make_job(make_mr_dicom(size=96, seed=seed)) for seed in range(3)]
    broken = make_job(b"this is not an image at all")
    for stored in [*good, broken]:
        send_analysis(stored.job_id, pg_settings)

    deadline = time.monotonic() + WAIT_S
    while True:
        with unit_of_work(pg_settings) as db:
            jobs = list(db.scalars(select(AnalysisJob)))
        if all(job.status in (JobStatus.succeeded, JobStatus.failed) for job in jobs):
            break
        assert time.monotonic() < deadline, [(job.status, job.error_code) for job in jobs]
        time.sleep(0.3)
    by_id = {job.id: job for job in jobs}
    assert {by_id[stored.job_id].status for stored in good} == {JobStatus.succeeded}
    failed = by_id[broken.job_id]
    assert failed.status is JobStatus.failed and failed.error_code

    samples = scrape(port)
    assert samples[("sightline_job_seconds_count", ())] == 4.0  # every job that ran to an outcome
    assert samples[("sightline_job_failures_total", (("code", failed.error_code),))] == 1.0
    other_failures = {
        key: value
        for key, value in samples.items()
        if key[0] == "sightline_job_failures_total" and key[1] != (("code", failed.error_code),)
    }
    assert not any(other_failures.values()), other_failures
