"""Fault probe: the broker restarts without persistence while studies are being analysed.

A private ``redis-server`` (its own port, no disk) is the broker of a real API, worker and
beat on PostgreSQL. Mid-run it is killed and started again empty: every message in it is
lost. Every acknowledged upload must still be stored and every job done exactly once,
because the job rows, not the messages, are the truth and the reconciler re-sends them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import bearer, issue_token, make_mr_dicom
from sqlalchemy import func, select
from stack import StartProcess, api_argv, beat_argv, free_port, wait_healthy, worker_argv

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AnalysisResult, Instance, JobStatus, Role
from service.settings import Settings

pytestmark = pytest.mark.integration

UPLOADS = 12
WAIT_S = 300.0


class PrivateRedis:
    """A redis-server on a free loopback port that keeps nothing on disk; restartable."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


def counts(settings: Settings) -> tuple[int, int, int]:
    with unit_of_work(settings) as db:
        instances = db.scalar(select(func.count()).select_from(Instance)) or 0
        done = db.scalar(select(func.count()).where(AnalysisJob.status == JobStatus.succeeded)) or 0
        results = db.scalar(select(func.count()).select_from(AnalysisResult)) or 0
    return int(instances), int(done), int(results)


def test_a_broker_restart_without_persistence_loses_no_study_and_runs_every_job_once(
    pg_settings: Settings,
    stack_env: dict[str, str],
    start_process: StartProcess,
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    env = {
        **stack_env,
        "SIGHTLINE_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/0",
        "SIGHTLINE_RECONCILE_INTERVAL_SECONDS": "2",
        "SIGHTLINE_JOB_DEADLINE_SECONDS": "8",
        "SIGHTLINE_WORKER_METRICS_PORT": "0",
        "SIGHTLINE_BEAT_METRICS_PORT": "0",
    }
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    wait_healthy(api_url, start_process("api", api_argv(port), env))
    start_process("worker", worker_argv("w1"), env).wait_for_log("ready.")
    start_process("beat", beat_argv(tmp_path / "beat-schedule"), env)
    ingest = bearer(issue_token(pg_settings, Role.ingest))

    def upload(seed: int) -> None:
        files = [("files", (f"{seed}.dcm", make_mr_dicom(lesion=(60, 60, 20), seed=seed), "application/dicom"))]
        response = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=ingest, timeout=60)
        assert response.status_code == 202, response.text

    for seed in range(UPLOADS // 2):
        upload(seed)
    private_redis.kill()  # queued messages are gone with it
    private_redis.start()
    for seed in range(UPLOADS // 2, UPLOADS):
        upload(seed)

    deadline = time.monotonic() + WAIT_S
    while counts(pg_settings)[1] < UPLOADS and time.monotonic() < deadline:
        time.sleep(0.5)
    instances, done, results = counts(pg_settings)
    assert (instances, done, results) == (UPLOADS, UPLOADS, UPLOADS)  # each job once: one result each
