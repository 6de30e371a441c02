"""Admin statistics: the confusion matrix from two readers' feedback, queue, processing time, failures."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, Series, utcnow
from service.settings import Settings
from service.workflow.stats import percentile

MakeStudy = Callable[..., str]


def add_jobs(settings: Settings, uid: str, jobs: list[tuple[JobStatus, float | None, str | None]]) -> None:
    """One instance + job per entry: (status, seconds from start to finish, error code)."""
    now = utcnow()
    with unit_of_work(settings) as db:
        series = db.scalar(select(Series).where(Series.series_instance_uid == uid + ".1"))
        assert series is not None
        for n, (status, seconds, code) in enumerate(jobs):
            instance = Instance(
                id=uuid.uuid4(), series_id=series.id, study_id=series.study_id, sop_instance_uid=f"{uid}.1.{n}",
                source_kind="dicom", blob_key=f"k{n}", blob_size=1,
            )  # fmt: skip
            db.add(instance)
            db.flush()
            started = now - timedelta(seconds=seconds) if seconds is not None else None
            finished = now if seconds is not None else None
            db.add(
                AnalysisJob(
                    instance_id=instance.id, status=status, error_code=code, started_at=started, finished_at=finished
                )
            )


def test_stats_confusion_matrix_from_two_readers(
    client: TestClient,
    settings: Settings,
    make_study: MakeStudy,
    reader_a: dict[str, str],
    reader_b: dict[str, str],
    admin: dict[str, str],
) -> None:
    glioma, meningioma = make_study(label="glioma"), make_study(label="meningioma")
    for uid, headers, body in [
        (glioma, reader_a, {"agrees": True}),
        (glioma, reader_b, {"agrees": False, "label": "notumor"}),
        (meningioma, reader_a, {"agrees": True}),
        (meningioma, reader_b, {"agrees": True}),
    ]:
        assert client.post(f"/api/v1/studies/{uid}/feedback", json=body, headers=headers).status_code == 201
    add_jobs(
        settings,
        glioma,
        [
            (JobStatus.succeeded, 1.0, None),
            (JobStatus.succeeded, 3.0, None),
            (JobStatus.failed, 2.0, "decode_error"),
            (JobStatus.queued, None, None),
        ],
    )
    response = client.get("/api/v1/admin/stats", headers=admin)
    assert response.status_code == 200
    body = response.json()
    feedback = body["feedback"]
    assert feedback["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert feedback["confusion"] == {"glioma": {"glioma": 1, "notumor": 1}, "meningioma": {"meningioma": 2}}
    assert feedback["agreement"]["glioma"] == {"agreed": 1, "total": 2, "rate": 0.5}
    assert feedback["agreement"]["meningioma"] == {"agreed": 2, "total": 2, "rate": 1.0}
    assert feedback["agreement"]["pituitary"] == {"agreed": 0, "total": 0, "rate": None}
    assert body["queue"] == {"queued": 1, "running": 0, "succeeded": 2, "failed": 1}
    seconds = body["processing_seconds"]
    assert seconds["count"] == 3 and abs(seconds["p50"] - 2.0) < 0.01 and abs(seconds["p95"] - 2.9) < 0.01
    failures = body["failures"]
    assert failures["total"] == 1 and failures["by_code"] == {"decode_error": 1}
    assert [f["error_code"] for f in failures["recent"]] == ["decode_error"]
    assert set(failures["recent"][0]) == {"error_code", "finished_at"}


def test_stats_when_empty_and_refusals(client: TestClient, reader_a: dict[str, str], admin: dict[str, str]) -> None:
    body = client.get("/api/v1/admin/stats", headers=admin).json()
    assert body["feedback"]["confusion"] == {}
    assert body["processing_seconds"] == {"count": 0, "p50": None, "p95": None}
    assert body["failures"] == {"total": 0, "by_code": {}, "recent": []}
    assert client.get("/api/v1/admin/stats").status_code == 401
    assert client.get("/api/v1/admin/stats", headers=reader_a).status_code == 403


def test_percentile_interpolates_like_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([0.0, 10.0], 0.95) == 9.5
