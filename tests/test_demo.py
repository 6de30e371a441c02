"""``sightline demo`` end to end on the embedded defaults: SQLite, SQLite broker, local files.

The same path a new user takes with ``make demo``: real API and Celery worker processes,
synthetic samples pushed over HTTP, results in the worklist.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import bearer
from stack import REPO_ROOT, free_port

WAIT_S = 180.0


def _wait_for(predicate, what: str, process: subprocess.Popen[bytes], log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not (value := predicate()):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen; demo log:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)
    return value


def test_demo_serves_analysed_synthetic_studies(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(SIGHTLINE_PORT=str(port), PYTHONPATH=str(REPO_ROOT), SIGHTLINE_LOG_JSON="true")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "demo", "--samples", "2"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        token = _wait_for(lambda: re.search(r"Reader token:\s+(\S+)", log.read_text()), "banner", demo, log)[1]
        base = f"http://127.0.0.1:{port}"

        def analysed() -> list[dict[str, object]] | None:
            items = httpx.get(f"{base}/api/v1/worklist", headers=bearer(token), timeout=10).json()["items"]
            done = len(items) == 2 and all(item["status"] == "analysed" for item in items)
            return items if done else None

        items = _wait_for(analysed, "analysis of both samples", demo, log)
        assert all(item["synthetic"] for item in items)
        assert all("SYNTHETIC" in str(item["description"]) for item in items)
        sop = items[0]["key_instance_sop_uid"]
        overlay = httpx.get(f"{base}/api/v1/instances/{sop}/overlay.png", headers=bearer(token), timeout=10)
        assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "var" / "sightline.db").exists()
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=40)
            except subprocess.TimeoutExpired:
                demo.kill()
    assert demo.returncode == 0, log.read_text(errors="replace")[-3000:]
