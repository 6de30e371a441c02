"""The viewer's Explain control in a real browser: the reader picks another method for the
class the default map explains, the worker (run here, as the embedded stack's worker would)
computes it, and the map layer's pixels change; "Default map" brings the old ones back."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest
from e2e.conftest import LESION_STUDY, LiveSite
from e2e.test_viewer import mad, open_study, pixels, set_opacity, slice_plan, wait_slice
from sqlalchemy import select

from service.db.session import unit_of_work
from service.db.tables import ExplanationStatus, OnDemandExplanation
from worker.explain import explain_job
from worker.pipeline import Outcome

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow


def queued_explanation(site: LiveSite, timeout_s: float = 30.0) -> uuid.UUID:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with unit_of_work(site.settings) as db:
            found = db.scalar(
                select(OnDemandExplanation.id).where(OnDemandExplanation.status == ExplanationStatus.queued)
            )
        if found is not None:
            return found
        time.sleep(0.1)
    raise TimeoutError("the page did not ask for an explanation")


def test_explain_shows_another_methods_map_in_the_layer(page: Page, live_site: LiveSite) -> None:
    slices, instances = slice_plan(live_site, LESION_STUDY)
    key = max(range(len(slices)), key=lambda n: slices[n]["tumour_score"])
    result = instances[slices[key]["sop_instance_uid"]]["result"]
    other = "gradcam" if result["cam_method"] != "gradcam" else "hirescam"
    open_study(page, live_site, LESION_STUDY)
    page.click(f".strip-bar[data-index='{key}']")
    wait_slice(page, key)
    set_opacity(page, 100)
    page.wait_for_function("() => document.querySelectorAll('#explain-method option').length === 9")
    assert page.input_value("#explain-label") == result["target_label"]
    overlay = page.locator("#overlay-canvas")
    before = pixels(overlay)

    page.select_option("#explain-method", other)
    page.click("#explain-button")
    explanation_id = queued_explanation(live_site)
    outcome = explain_job(explanation_id, settings=live_site.settings, classifier=live_site.classifier, worker_name="w")
    assert outcome is Outcome.succeeded
    page.wait_for_function("() => document.body.dataset.explain === 'done'")
    after = pixels(overlay)
    assert mad(before, after) > 2.0  # the new map is drawn where the old one was
    status = page.text_content("#explain-status") or ""
    assert f"Showing {other} for {result['target_label']}" in status
    assert other in (page.text_content("#legend-text") or "")

    page.click("#explain-default")
    page.wait_for_function("() => document.getElementById('explain-default').disabled")
    assert mad(before, pixels(overlay)) < 0.5  # the default map is back
