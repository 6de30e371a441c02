"""End-to-end throughput: uploads through the API, analysed by one real Celery worker.

The stack is the production one (uvicorn, PostgreSQL, Redis, a solo-pool worker using
every core for ONNX Runtime, as the raw measurement does) when PostgreSQL and Redis are
reachable, else the embedded default (SQLite + SQLite broker). With ``beat=True`` a
separate Celery beat process schedules the reconciler and the series sweep, as in
``deploy/`` (one beat beside the workers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from helpers import bearer, issue_token, make_mr_dicom, make_settings, scratch_pg_database
from sqlalchemy import func, select
from stack import ServiceProcess, api_argv, beat_argv, free_port, wait_healthy, worker_argv

from service.db.migrate import upgrade
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, JobStatus, Role
from service.settings import Settings

REDIS_URL = os.environ.get("SIGHTLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@dataclass
class Stack:
    settings: Settings
    api_url: str
    ingest_token: str
    backend: str
    worker_pid: int  # the Celery main process; its pool children load the model
    api_pid: int
    beat_pid: int | None


@contextmanager
def _database(workdir: Path, production: bool) -> Iterator[Settings]:
    if not production:
        settings = make_settings(workdir)
        upgrade(settings.database_url)
        yield settings
        return
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_pg_database("sightline_bench") as url:
        upgrade(url)
        yield make_settings(workdir, database_url=url, broker_url=REDIS_URL)


@contextmanager
def running_stack(
    workdir: Path,
    model_cache: Path,
    production: bool,
    processes: int = 1,
    *,
    extra_env: Mapping[str, str] | None = None,
    beat: bool = False,
) -> Iterator[Stack]:
    """API + worker (+ beat); ``extra_env`` (``SIGHTLINE_*`` settings) goes to every process."""
    with _database(workdir, production) as settings:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
        env.update(
            SIGHTLINE_DATABASE_URL=settings.database_url,
            SIGHTLINE_BROKER_URL=settings.broker_url,
            SIGHTLINE_STORAGE_DIR=str(settings.storage_dir),
            SIGHTLINE_MODEL_CACHE_DIR=str(model_cache),
            PYTHONUNBUFFERED="1",
            # One ONNX thread per process when several share the cores, else ORT's default (all).
            SIGHTLINE_ONNX_THREADS=str(max(1, (os.cpu_count() or 1) // processes) if processes > 1 else 0),
        )
        env.update(extra_env or {})
        port = free_port()
        started: list[ServiceProcess] = []
        try:
            api = ServiceProcess("api", api_argv(port), env, workdir / "api.log")
            started.append(api)
            argv = worker_argv("bench")
            if processes > 1:
                argv = [a for a in argv if a not in ("--pool=solo", "--concurrency=1")]
                argv += ["--pool=prefork", f"--concurrency={processes}"]
            worker = ServiceProcess("worker", argv, env, workdir / "worker.log")
            started.append(worker)
            if beat:
                schedule = workdir / "celerybeat-schedule"
                started.append(ServiceProcess("beat", beat_argv(schedule), env, workdir / "beat.log"))
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, api)
            worker.wait_for_log("ready.")
            if beat:
                started[-1].wait_for_log("beat: Starting")
            backend = "PostgreSQL + Redis" if production else "SQLite + SQLite broker"
            yield Stack(
                settings,
                url,
                issue_token(settings, Role.ingest),
                backend,
                worker_pid=worker.proc.pid,
                api_pid=api.proc.pid,
                beat_pid=started[-1].proc.pid if beat else None,
            )
        finally:
            for process in reversed(started):
                process.stop()


def _ended(settings: Settings) -> int:
    with unit_of_work(settings) as db:
        done = (JobStatus.succeeded, JobStatus.failed)
        return int(db.scalar(select(func.count()).where(AnalysisJob.status.in_(done))) or 0)


def push_and_wait(stack: Stack, images: int, seed: int, timeout_s: float = 600.0) -> float:
    """Push ``images`` single-file uploads (as a PACS does) and return images/s until all are analysed."""
    before = _ended(stack.settings)
    files = [make_mr_dicom(size=256, lesion=(90, 100, 18), seed=seed * 1000 + i) for i in range(images)]
    started = time.perf_counter()
    with httpx.Client(base_url=stack.api_url, headers=bearer(stack.ingest_token), timeout=60) as client:
        for i, data in enumerate(files):
            response = client.post("/api/v1/uploads", files=[("files", (f"{i}.dcm", data, "application/dicom"))])
            response.raise_for_status()
    deadline = time.monotonic() + timeout_s
    while _ended(stack.settings) < before + images:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish the batch")
        time.sleep(0.05)
    return images / (time.perf_counter() - started)
