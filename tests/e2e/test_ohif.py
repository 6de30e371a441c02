"""A stock OHIF Viewer opens what Sightline holds over DICOMweb, offline, in a real browser.

The viewer is the prebuilt OHIF v2 package from the npm registry (``@ohif/viewer``, fetched
once into a cache; no CDN at run time), served by a tiny same-origin "site" that passes
``/dicomweb/*`` through to a real uvicorn Sightline API. The study is stored over STOW-RS,
analysed by the real classifier, and gets its SR, Secondary Capture and presentation state;
Chromium (Playwright) then lists the study, opens it, sees the AI result series and a
rendered image.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from e2e.ohif_site import OHIF_PACKAGE, OHIF_VERSION, OhifUnavailable, fetch_ohif, serve, viewer_app
from helpers import bearer, issue_token, mr_slice, run_queued
from stack import REPO_ROOT, free_port

from models.inference import Classifier
from service.app import create_app
from service.db.tables import Role
from service.settings import Settings
from worker.series import sweep_quiet_series

pytestmark = pytest.mark.slow

STUDY = "1.2.826.0.1.3680043.8.498.4242"
SERIES = f"{STUDY}.1"
BOUNDARY = "sightline-e2e-ohif"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RESULT_SERIES = {  # (modality, series description) of the four result series
    ("SR", "Sightline AI results (research use)"),
    ("OT", "Sightline AI overlay (research use)"),
    ("PR", "Sightline AI annotation (research use)"),
    ("OT", "Sightline AI heatmap (research use)"),
}
SR_SERIES, OVERLAY_SERIES = "Sightline AI results (research use)", "Sightline AI overlay (research use)"
UI_TIMEOUT_MS = 45_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the OHIF browser test: {reason}")
    pytest.skip(f"OHIF END-TO-END TEST NOT RUN: {reason}")


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    try:
        dist: Path = fetch_ohif()
        return dist
    except OhifUnavailable as exc:
        _unavailable(f"cannot fetch {OHIF_PACKAGE}@{OHIF_VERSION} from the npm registry ({exc})")
        raise  # unreachable: skip/fail raise


@dataclass(frozen=True)
class Site:
    api: str
    viewer: str
    reader_token: str


def stow(api: str, token: str, *instances: bytes) -> None:
    body = (
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in instances
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    response = httpx.post(
        f"{api}/dicomweb/studies", content=body, headers={"Content-Type": content_type, **bearer(token)}, timeout=60
    )
    assert response.status_code == 200, response.text


def qido(api: str, token: str, path: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/dicomweb/{path}", headers=bearer(token), timeout=30)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def value(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value", [None])[0]


@pytest.fixture()
def site(settings: Settings, classifier: Classifier, ohif_dist: Path) -> Iterator[Site]:
    if CHROMIUM is None:
        _unavailable("no chromium on this machine (apt-get install chromium)")
    reader = issue_token(settings, Role.reader)
    with serve(create_app(settings), free_port()) as api:
        slices = [mr_slice(STUDY, SERIES, n, lesion=n in (2, 3, 4)) for n in range(1, 6)]
        stow(api, issue_token(settings, Role.ingest), *slices)
        assert run_queued(settings, classifier) == 5
        sweep_quiet_series(settings)
        series = {(value(s, "00080060"), value(s, "0008103E")) for s in qido(api, reader, f"studies/{STUDY}/series")}
        assert series >= RESULT_SERIES, series
        with serve(viewer_app(ohif_dist, api, reader), free_port()) as viewer:
            yield Site(api, viewer, reader)


def non_blank(png: Path) -> float:
    """The standard deviation of the grey levels of a screenshot (0 for a blank one)."""
    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    return float(np.std(image))


def test_stock_ohif_lists_opens_and_renders_a_sightline_study(site: Site, tmp_path: Path) -> None:
    from playwright.sync_api import Route, expect, sync_playwright

    failures: list[str] = []

    def local_only(route: Route) -> None:
        url = route.request.url
        if url.startswith((site.viewer + "/", "blob:", "data:")):
            route.continue_()
        else:
            failures.append(f"offsite {url}")
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.on(
                "response",
                lambda r: failures.append(f"{r.request.method} {r.url} -> {r.status}") if r.status >= 400 else None,
            )
            page.on("requestfailed", lambda r: failures.append(f"{r.method} {r.url} failed: {r.failure}"))
            page.on("console", lambda m: failures.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            # Nothing may leave 127.0.0.1 (no CDN, no fonts, no telemetry).
            page.route("**/*", local_only)
            try:
                page.goto(site.viewer + "/")
                row = page.get_by_text("PAT-TEST-1").first
                expect(row).to_be_visible()
                expect(page.get_by_text("MRI BRAIN W/O CONTRAST").first).to_be_visible()
                expect(page.get_by_text("ACC0001").first).to_be_visible()
                page.screenshot(path=str(tmp_path / "study-list.png"), full_page=True)
                row.click()
                page.wait_for_url(f"**/viewer/{STUDY}*")
                for description in (SR_SERIES, OVERLAY_SERIES):
                    expect(page.get_by_text(description).first).to_be_visible()
                canvas = page.locator(".viewport-element canvas").first
                expect(canvas).to_be_visible()
                page.wait_for_timeout(2000)
                for close in page.locator(".sb-closeBtn").all():  # OHIF's own notices (see ohif_site)
                    close.click()
                shot = tmp_path / "viewport.png"
                canvas.screenshot(path=str(shot))
                page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
                assert non_blank(shot) > 5.0, f"the viewport is blank; browser errors: {failures}"
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print("browser failures:", *failures, sep="\n  ")
                raise
        finally:
            browser.close()
    print("browser console errors (OHIF's own, not fatal):", *failures, sep="\n  ")
    refused = [f for f in failures if not f.startswith("console ")]
    assert not refused, f"requests failed or left 127.0.0.1: {refused}"
    reports = REPO_ROOT / "reports"
    reports.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "viewer.png", reports / "ohif.png")
