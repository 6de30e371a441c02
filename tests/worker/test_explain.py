"""The explanation worker on the embedded backend: the same pictures as the pipeline for the
same method and class, permanent errors fail the row with a code, and the reconciler
re-sends stuck rows through the real broker (or fails those out of attempts)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom, run_queued
from sqlalchemy import select

from models.inference import Classifier
from service.db.session import unit_of_work
from service.db.tables import AnalysisResult, ExplanationStatus, Instance, OnDemandExplanation, Role, utcnow
from service.queue import EXPLAIN_TASK
from service.settings import Settings
from service.storage import BlobStore
from worker.explain import explain_job, reconcile_explanations
from worker.pipeline import Outcome
from worker.tasks import explain

Drain = Callable[[], list[tuple[str, list[object]]]]


def analysed_instance(client: TestClient, tokens: dict[Role, str], settings: Settings, classifier: Classifier) -> str:
    files = [("files", ("a.dcm", make_mr_dicom(lesion=(40, 48, 14)), "application/dicom"))]
    response = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest]))
    assert response.status_code == 202, response.json()
    assert run_queued(settings, classifier) == 1
    instance_id: str = response.json()["instances"][0]["instance_id"]
    return instance_id


def ask(client: TestClient, tokens: dict[Role, str], instance_id: str, method: str, label: str) -> uuid.UUID:
    response = client.post(
        f"/api/v1/instances/{instance_id}/explanations",
        json={"method": method, "target_label": label},
        headers=bearer(tokens[Role.reader]),
    )
    assert response.status_code == 202, response.json()
    return uuid.UUID(response.json()["id"])


def row_of(settings: Settings, explanation_id: uuid.UUID) -> OnDemandExplanation:
    with unit_of_work(settings) as db:
        return db.get_one(OnDemandExplanation, explanation_id)


def set_row(settings: Settings, explanation_id: uuid.UUID, **values: Any) -> None:
    with unit_of_work(settings) as db:
        row = db.get_one(OnDemandExplanation, explanation_id)
        for name, value in values.items():
            setattr(row, name, value)


def default_result(settings: Settings) -> AnalysisResult:
    with unit_of_work(settings) as db:
        return db.scalars(select(AnalysisResult)).one()


def run(settings: Settings, classifier: Classifier, explanation_id: uuid.UUID) -> Outcome:
    return explain_job(explanation_id, settings=settings, classifier=classifier, worker_name="w")


def test_the_default_method_and_class_redraw_the_default_pictures_exactly(
    client: TestClient, tokens: dict[Role, str], settings: Settings, classifier: Classifier
) -> None:
    instance_id = analysed_instance(client, tokens, settings, classifier)
    result = default_result(settings)
    assert result.target_label is not None
    same = ask(client, tokens, instance_id, result.cam_method, result.target_label)
    other = "gradcam" if result.cam_method != "gradcam" else "hirescam"
    different = ask(client, tokens, instance_id, other, result.target_label)

    assert run(settings, classifier, same) is Outcome.succeeded
    assert run(settings, classifier, different) is Outcome.succeeded

    redrawn, changed = row_of(settings, same), row_of(settings, different)
    assert redrawn.status is ExplanationStatus.done and redrawn.attempts == 1
    # Content addresses: the same bytes as the pipeline's pictures, so the same keys.
    keys = ("heatmap_key", "overlay_key", "contour_key", "map_key", "outline_key")
    assert [getattr(redrawn, k) for k in keys] == [getattr(result, k) for k in keys]
    assert redrawn.cam_strength == pytest.approx(result.cam_strength, rel=1e-5)
    assert redrawn.probabilities == pytest.approx(result.probabilities, abs=1e-6)
    assert redrawn.cam_ready_sha256 == result.cam_ready_sha256 and redrawn.model_sha256 == result.model_sha256
    assert changed.map_key != result.map_key and changed.overlay_key != result.overlay_key
    assert changed.probabilities == pytest.approx(result.probabilities, abs=1e-6)  # same frame, same model
    assert changed.timings_ms is not None and changed.timings_ms["total"] > 0


def test_a_missing_file_fails_the_row_with_blob_missing(
    client: TestClient, tokens: dict[Role, str], settings: Settings, classifier: Classifier
) -> None:
    instance_id = analysed_instance(client, tokens, settings, classifier)
    explanation_id = ask(client, tokens, instance_id, "gradcam", "meningioma")
    with unit_of_work(settings) as db:
        blob_key = db.scalars(select(Instance.blob_key).where(Instance.id == uuid.UUID(instance_id))).one()
    BlobStore(settings.storage_dir).path_for(blob_key).unlink()

    assert run(settings, classifier, explanation_id) is Outcome.failed
    row = row_of(settings, explanation_id)
    assert (row.status, row.error_code, row.attempts) == (ExplanationStatus.failed, "blob_missing", 1)
    assert row.map_key is None and row.finished_at is not None


def test_a_row_for_another_model_version_is_refused(
    client: TestClient, tokens: dict[Role, str], settings: Settings, classifier: Classifier
) -> None:
    instance_id = analysed_instance(client, tokens, settings, classifier)
    explanation_id = ask(client, tokens, instance_id, "gradcam", "glioma")
    set_row(settings, explanation_id, model_version="0.0-retired")

    assert run(settings, classifier, explanation_id) is Outcome.failed
    row = row_of(settings, explanation_id)
    assert (row.status, row.error_code) == (ExplanationStatus.failed, "model_unavailable")
    assert run(settings, classifier, explanation_id) is Outcome.skipped  # a failed row is not claimed again


def ago(settings: Settings, extra_s: float) -> datetime:
    return utcnow() - timedelta(seconds=settings.job_deadline_seconds + extra_s)


def test_the_reconciler_resends_stuck_rows_and_fails_exhausted_ones(
    client: TestClient,
    tokens: dict[Role, str],
    settings: Settings,
    classifier: Classifier,
    drain_analysis_queue: Drain,
) -> None:
    instance_id = analysed_instance(client, tokens, settings, classifier)
    drain_analysis_queue()  # the upload's and the requests' own messages
    lost = ask(client, tokens, instance_id, "gradcam", "glioma")
    dead = ask(client, tokens, instance_id, "gradcam", "pituitary")
    exhausted = ask(client, tokens, instance_id, "gradcam", "notumor")
    fresh = ask(client, tokens, instance_id, "hirescam", "notumor")
    assert sorted(drain_analysis_queue()) == sorted((EXPLAIN_TASK, [str(i)]) for i in (lost, dead, exhausted, fresh))
    set_row(settings, lost, enqueued_at=ago(settings, 5))
    set_row(settings, dead, status=ExplanationStatus.running, attempts=1, started_at=ago(settings, 5))
    attempts = settings.job_max_attempts
    set_row(settings, exhausted, status=ExplanationStatus.running, attempts=attempts, started_at=ago(settings, 5))

    assert reconcile_explanations(settings).as_dict() == {"requeued": 2, "failed": 1}

    assert sorted(drain_analysis_queue()) == sorted([(EXPLAIN_TASK, [str(lost)]), (EXPLAIN_TASK, [str(dead)])])
    assert row_of(settings, dead).status is ExplanationStatus.queued and row_of(settings, dead).attempts == 1
    gone = row_of(settings, exhausted)
    assert (gone.status, gone.error_code) == (ExplanationStatus.failed, "retries_exhausted")
    assert row_of(settings, fresh).status is ExplanationStatus.queued
    assert run(settings, classifier, dead) is Outcome.succeeded and row_of(settings, dead).attempts == 2


def test_the_task_drops_a_malformed_id() -> None:
    assert explain("not-a-uuid") == "skipped"
