"""Study-level triage through the real pipeline: every slice scored, series completed after a
quiet period held in the database, late instances re-scored without re-running the rest."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, mr_slice, run_queued, upload
from phantoms import enhanced_volume
from pydicom.uid import CTImageStorage
from sqlalchemy import select

from models.inference import Classifier
from service.app import create_app
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
)
from service.settings import Settings
from worker.series import settle_study, sweep_after_job, sweep_quiet_series

STUDY = "1.2.826.0.1.8001"
SERIES = f"{STUDY}.1"


def age_series(settings: Settings, seconds: float) -> None:
    """As if the last instance arrived ``seconds`` ago (instead of sleeping through the quiet period)."""
    with unit_of_work(settings) as db:
        for series in db.scalars(select(Series)):
            series.last_instance_at = series.last_instance_at - timedelta(seconds=seconds)


def study_row(settings: Settings) -> Study:
    with unit_of_work(settings) as db:
        study = db.scalars(select(Study).where(Study.study_instance_uid == STUDY)).one()
        db.expunge(study)
        return study


@pytest.fixture()
def quiet_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"series_quiet_seconds": 60.0})


def test_two_replicas_one_series_one_score_after_the_quiet_period(
    quiet_settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    slices = [mr_slice(STUDY, SERIES, n, lesion=n in (3, 4, 5)) for n in range(1, 7)]
    with TestClient(create_app(quiet_settings)) as first, TestClient(create_app(quiet_settings)) as second:
        upload(first, tokens[Role.ingest], *slices[0::2])  # each replica receives half the series
        upload(second, tokens[Role.ingest], *slices[1::2])
    assert run_queued(quiet_settings, classifier) == 6
    assert sweep_quiet_series(quiet_settings) == 0  # jobs done, but the series is not quiet yet
    pending = study_row(quiet_settings)
    assert (pending.status, pending.triage_score) == (StudyStatus.pending, None)

    age_series(quiet_settings, 61)
    assert sweep_quiet_series(quiet_settings) == 1
    study = study_row(quiet_settings)
    with unit_of_work(quiet_settings) as db:
        (series,) = db.scalars(select(Series)).all()
        scores = {
            number: score
            for number, score in db.execute(
                select(Instance.instance_number, SliceScore.tumour_score).join(Instance)
            ).all()
        }
    ordered = [scores[n] for n in range(1, 7)]
    windows = [np.mean(ordered[i : i + 3]) for i in range(4)]
    assert series.completed_at is not None and series.scored_slices == 6
    assert series.series_score == pytest.approx(max(windows))
    assert study.status is StudyStatus.analysed
    assert study.triage_score == pytest.approx(series.series_score)
    assert study.key_series_id == series.id and study.key_instance_id == series.key_instance_id


def test_a_late_instance_reopens_the_series_and_only_it_is_analysed(
    settings: Settings, client: TestClient, tokens: dict[Role, str], classifier: Classifier
) -> None:
    upload(client, tokens[Role.ingest], *[mr_slice(STUDY, SERIES, n) for n in range(1, 4)])
    assert run_queued(settings, classifier) == 3
    with unit_of_work(settings) as db:
        before = {r.id: (r.created_at, r.tumour_score) for r in db.scalars(select(AnalysisResult))}
        first_score = db.scalars(select(Series.series_score)).one()
    assert study_row(settings).status is StudyStatus.analysed

    quiet = settings.model_copy(update={"series_quiet_seconds": 60.0})
    with TestClient(create_app(quiet)) as late_client:
        upload(late_client, tokens[Role.ingest], mr_slice(STUDY, SERIES, 4, lesion=True))
    reopened = study_row(settings)
    assert reopened.status is StudyStatus.pending
    assert reopened.triage_score == pytest.approx(first_score)  # kept while the late slice is analysed
    with unit_of_work(settings) as db:
        assert db.scalars(select(Series.completed_at)).one() is None

    assert run_queued(quiet, classifier) == 1  # only the new instance runs
    age_series(quiet, 61)
    assert sweep_quiet_series(quiet) == 1
    with unit_of_work(settings) as db:
        after = {r.id: (r.created_at, r.tumour_score) for r in db.scalars(select(AnalysisResult))}
        attempts = set(db.scalars(select(AnalysisJob.attempts)))
        series = db.scalars(select(Series)).one()
    assert len(after) == 4 and all(after[key] == value for key, value in before.items())
    assert attempts == {1}
    assert series.scored_slices == 4 and series.completed_at is not None
    assert study_row(settings).status is StudyStatus.analysed


def test_score_curve_follows_anatomy_not_frame_index(
    settings: Settings, client: TestClient, tokens: dict[Role, str], classifier: Classifier
) -> None:
    positions = [20.0, 0.0, 10.0, 30.0, 5.0]
    volume = enhanced_volume(
        positions,
        {0},
        StudyInstanceUID=STUDY,
        SeriesInstanceUID=SERIES,
        SOPInstanceUID=f"{SERIES}.1",
        BodyPartExamined="BRAIN",
        ImageType=["ORIGINAL", "PRIMARY"],
    )
    upload(client, tokens[Role.ingest], volume)
    assert run_queued(settings, classifier) == 1
    curve = client.get(f"/api/v1/series/{SERIES}/slices", headers=bearer(tokens[Role.reader])).json()
    assert [s["position_mm"] for s in curve["slices"]] == sorted(positions)
    assert [s["frame_index"] for s in curve["slices"]] == [1, 4, 2, 0, 3]
    assert curve["complete"] is True and curve["key_index"] is not None
    for item in curve["slices"]:
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["tumour_score"] == pytest.approx(1.0 - item["probabilities"]["notumor"], abs=1e-6)
    key = curve["slices"][curve["key_index"]]
    detail = client.get(f"/api/v1/studies/{STUDY}", headers=bearer(tokens[Role.reader])).json()
    assert detail["key_frame"] == key["frame_index"]
    assert detail["series"][0]["scored_slices"] == 5
    assert client.get("/api/v1/series/1.2.3.999/slices", headers=bearer(tokens[Role.reader])).status_code == 404


def test_many_normal_slices_with_one_stray_cannot_outrank_a_real_lesion(
    settings: Settings, client: TestClient, tokens: dict[Role, str]
) -> None:
    """150 slices at 0.05 with one at 0.99, against 20 slices with 3 adjacent at 0.8: the lesion wins;
    a CT study that arrived first (not applicable) sorts after both."""
    ct = mr_slice("2.25.1500", "2.25.1500.1", 1, Modality="CT", SOPClassUID=CTImageStorage)
    upload(client, tokens[Role.ingest], ct)
    stray = [0.05] * 150
    stray[70] = 0.99
    lesion = [0.05] * 20
    lesion[9:12] = [0.8, 0.85, 0.8]
    for uid, scores in (("2.25.1501", stray), ("2.25.1502", lesion)):
        store_scored_series(settings, uid, scores)
    rows = client.get("/api/v1/worklist", headers=bearer(tokens[Role.reader])).json()["items"]
    assert [row["study_instance_uid"] for row in rows] == ["2.25.1502", "2.25.1501", "2.25.1500"]
    assert (rows[2]["status"], rows[2]["triage_score"]) == ("not_applicable", None)
    assert rows[0]["triage_score"] == pytest.approx(0.8166666, abs=1e-6)
    assert rows[1]["triage_score"] == pytest.approx((0.99 + 0.05 + 0.05) / 3)


def store_scored_series(settings: Settings, study_uid: str, scores: list[float]) -> None:
    """What the worker leaves behind for a series with these per-slice scores (no model run)."""
    with unit_of_work(settings) as db:
        study = Study(id=uuid.uuid4(), study_instance_uid=study_uid, patient_id="P")
        series = Series(id=uuid.uuid4(), study_id=study.id, series_instance_uid=f"{study_uid}.1")
        db.add_all([study, series])
        db.flush()
        for number, score in enumerate(scores, start=1):
            instance = Instance(
                id=uuid.uuid4(), series_id=series.id, study_id=study.id, sop_instance_uid=f"{study_uid}.1.{number}",
                instance_number=number, source_kind="dicom", blob_key="0" * 64, blob_size=1, rows=1, columns=1,
            )  # fmt: skip
            job = AnalysisJob(id=uuid.uuid4(), instance_id=instance.id, status=JobStatus.succeeded, attempts=1)
            db.add_all([instance, job])
            db.flush()
            result = AnalysisResult(
                id=uuid.uuid4(), job_id=job.id, instance_id=instance.id, model_name="m", model_version="1",
                model_sha256="0" * 64, cam_method="hirescam", label="glioma", tumour_score=score,
                probabilities={}, timings_ms={}, original_key="0" * 64, heatmap_key="0" * 64,
                overlay_key="0" * 64, contour_key="0" * 64,
            )  # fmt: skip
            db.add(result)
            db.flush()
            slice_row = SliceScore(
                result_id=result.id, instance_id=instance.id, series_id=series.id, frame_index=0,
                position=5.0 * number, tumour_score=score, label="glioma", probabilities={},
                target_label="glioma", cam_strength=1.0, cam=b"\0" * 4, cam_rows=1, cam_columns=1,
            )  # fmt: skip
            db.add(slice_row)
        db.flush()
        settle_study(db, study.id, settings)


def test_the_sweep_after_a_job_completes_other_quiet_studies_and_survives_a_database_outage(
    quiet_settings: Settings, client: TestClient, tokens: dict[Role, str], classifier: Classifier, tmp_path, caplog
) -> None:
    with TestClient(create_app(quiet_settings)) as quiet_client:
        upload(quiet_client, tokens[Role.ingest], mr_slice(STUDY, SERIES, 1))
    run_queued(quiet_settings, classifier)
    age_series(quiet_settings, 61)  # quiet now, but its own job finished long ago: nobody completes it
    assert study_row(quiet_settings).status is StudyStatus.pending
    sweep_after_job(quiet_settings)  # what every worker does after any job
    assert study_row(quiet_settings).status is StudyStatus.analysed

    unreachable = quiet_settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})
    sweep_after_job(unreachable)  # logged, never raised: the job it follows already succeeded
    assert "series sweep after a job failed" in caplog.text
