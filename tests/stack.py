"""Real processes of the stack (uvicorn API, Celery workers) for integration tests and benchmarks.

Every process runs in its own session (so its whole group can be signalled), binds
127.0.0.1 only, logs to a file, and is stopped by ``stop`` (idempotent).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
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


def worker_argv(node_name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app:celery_app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", "analysis",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"{node_name}@%h",
    ]  # fmt: skip


def beat_argv(schedule: Path) -> list[str]:
    """``sightline beat``, as operators run it: the reconciler and the series sweep on schedule."""
    return [sys.executable, "-m", "service.cli", "beat", "--schedule", str(schedule)]


def api_argv(port: int) -> list[str]:
    app = ["-m", "uvicorn", "--factory", "service.app:create_app"]
    return [sys.executable, *app, "--host", "127.0.0.1", "--port", str(port)]


def wait_healthy(url: str, process: ServiceProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``/healthz`` until the API answers; fail with its log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not come up:\n{process.log_text()[-3000:]}")
        time.sleep(0.2)
