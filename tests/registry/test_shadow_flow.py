"""A shadow version scores the same study; readers see only the active version; promotion
flips what they see, re-triaged from the stored slices. Real SQLite database, real model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, issue_token, mr_slice
from registry_fixtures import DEFAULT, SHADOW
from sqlalchemy import select

from models.inference import Classifier
from service.active_model import ModelKey
from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AnalysisResult, AuditEvent, JobStatus, Role, SliceScore, Study, StudyStatus
from service.registry.service import install, promote
from service.settings import Settings
from worker.jobs import claim_job
from worker.pipeline import Outcome, analyse_job

STUDY = "1.2.826.0.1.3680043.8.498.5100"
SERIES = f"{STUDY}.1"


@pytest.fixture()
def client(reg_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(reg_settings)) as test_client:
        yield test_client


def _upload_study(client: TestClient, settings: Settings, series: str = SERIES, **changes: object) -> None:
    files = [mr_slice(STUDY, series, n, lesion=n == 2, **changes) for n in (1, 2, 3)]
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    token = issue_token(settings, Role.ingest)
    response = client.post("/api/v1/uploads", files=parts, headers=bearer(token))
    assert response.status_code == 202, response.json()


def _jobs(settings: Settings) -> list[AnalysisJob]:
    with unit_of_work(settings) as db:
        return list(db.scalars(select(AnalysisJob).order_by(AnalysisJob.model_version, AnalysisJob.id)))


def _run(settings: Settings, classifiers: dict[ModelKey, Classifier], model: ModelKey) -> int:
    """Run ``model``'s queued jobs with its own classifier, as that model's worker would."""
    queued = [j.id for j in _jobs(settings) if j.status == JobStatus.queued and j.model_version == model.version]
    for job_id in queued:
        outcome = analyse_job(job_id, settings=settings, classifier=classifiers[model], worker_name="w")
        assert outcome is Outcome.succeeded
    return len(queued)


def _install_shadow(settings: Settings, routes: dict[str, list[str]] | None = None) -> None:
    with unit_of_work(settings) as db:
        install(db, settings, SHADOW, shadow=True, rules=routes or {}, actor="test-admin")


def _slice_scores(settings: Settings, model: ModelKey) -> list[float]:
    with unit_of_work(settings) as db:
        rows = db.scalars(
            select(SliceScore.tumour_score)
            .where(SliceScore.model_version == model.version)
            .order_by(SliceScore.position)
        )
        return list(rows)


def test_without_deployments_the_configured_model_is_active_and_alone(
    client: TestClient, reg_settings: Settings
) -> None:
    models = client.get("/api/v1/models", headers=bearer(issue_token(reg_settings, Role.admin)))
    assert models.status_code == 200
    assert [(m["model_version"], m["role"], m["implicit"], m["queue"]) for m in models.json()] == [
        ("0.1.1", "active", True, "analysis")
    ]
    assert client.get("/api/v1/models", headers=bearer(issue_token(reg_settings, Role.reader))).status_code == 403
    _upload_study(client, reg_settings)
    assert [(j.model_name, j.model_version) for j in _jobs(reg_settings)] == [(DEFAULT.name, DEFAULT.version)] * 3


def test_ingest_makes_one_job_per_matching_deployment(client: TestClient, reg_settings: Settings) -> None:
    _install_shadow(reg_settings, {"series_description": ["*T2*"]})
    _upload_study(client, reg_settings)  # AX T1: the shadow's rule does not match
    assert {j.model_version for j in _jobs(reg_settings)} == {"0.1.1"}
    _upload_study(client, reg_settings, series=f"{STUDY}.2", SeriesDescription="AX T2 FLAIR")
    versions = [j.model_version for j in _jobs(reg_settings)]
    assert versions.count("0.1.1") == 6 and versions.count("0.2.0") == 3


def test_a_worker_never_claims_another_models_job(reg_settings: Settings, client: TestClient) -> None:
    _install_shadow(reg_settings)
    _upload_study(client, reg_settings)
    shadow_job = next(j for j in _jobs(reg_settings) if j.model_version == SHADOW.version)
    assert claim_job(reg_settings, shadow_job.id, "default-worker", model=DEFAULT) is None
    assert claim_job(reg_settings, shadow_job.id, "default-worker") is None  # the worker's own model by default
    with unit_of_work(reg_settings) as db:
        assert db.get(AnalysisJob, shadow_job.id).status == JobStatus.queued  # type: ignore[union-attr]
    claim = claim_job(reg_settings, shadow_job.id, "shadow-worker", model=SHADOW)
    assert claim is not None and claim.job_id == shadow_job.id


def test_readers_see_only_the_active_model_until_promotion(
    client: TestClient, reg_settings: Settings, classifiers: dict[ModelKey, Classifier]
) -> None:
    _install_shadow(reg_settings)
    _upload_study(client, reg_settings)
    assert _run(reg_settings, classifiers, DEFAULT) == 3
    assert _run(reg_settings, classifiers, SHADOW) == 3
    active_scores = _slice_scores(reg_settings, DEFAULT)
    shadow_scores = _slice_scores(reg_settings, SHADOW)
    assert len(active_scores) == len(shadow_scores) == 3
    assert max(abs(a - s) for a, s in zip(active_scores, shadow_scores, strict=True)) > 1e-3

    reader = bearer(issue_token(reg_settings, Role.reader))
    _assert_readers_see(client, reader, DEFAULT, active_scores)

    admin = bearer(issue_token(reg_settings, Role.admin))
    label = _record_feedback(client, reader)
    report = client.get("/api/v1/models/agreement", headers=admin).json()
    readers = {r["model"]["version"]: (r["role"], r["studies"], r["agreement"]) for r in report["reader_feedback"]}
    assert readers["0.1.1"] == ("active", 1, 1.0)  # the reader confirmed the active model's label
    assert readers["0.2.0"][:2] == ("shadow", 1) and readers["0.2.0"][2] in (0.0, 1.0)
    assert label in classifiers[DEFAULT].manifest.labels
    assert report["active"] == {"name": DEFAULT.name, "version": DEFAULT.version}
    (shadow,) = report["shadows"]
    assert shadow["model"]["version"] == SHADOW.version
    assert shadow["paired_instances"] == 3 and shadow["paired_series"] == 1
    assert shadow["mean_abs_tumour_score_difference"] == pytest.approx(
        _mean_abs_result_difference(reg_settings), abs=1e-9
    )
    assert 0.0 <= shadow["label_agreement"] <= 1.0 and shadow["series_flag_agreement"] in (0.0, 1.0)

    with unit_of_work(reg_settings) as db:
        previous, retriaged = promote(db, reg_settings, SHADOW, actor="test-admin")
    assert previous == DEFAULT and retriaged == 1
    _assert_readers_see(client, reader, SHADOW, shadow_scores)
    with unit_of_work(reg_settings) as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "model_promote")).one()
        assert (event.actor, event.detail) == ("test-admin", {"from": str(DEFAULT), "to": str(SHADOW)})
    roles = {m["model_version"]: m["role"] for m in client.get("/api/v1/models", headers=admin).json()}
    assert roles == {"0.1.1": "shadow", "0.2.0": "active"}


def _assert_readers_see(client: TestClient, reader: dict[str, str], model: ModelKey, scores: list[float]) -> None:
    """Worklist, study page, score curve and images all come from ``model`` alone."""
    (row,) = client.get("/api/v1/worklist", headers=reader).json()["items"]
    study = client.get(f"/api/v1/studies/{STUDY}", headers=reader).json()
    instances = study["series"][0]["instances"]
    assert {i["result"]["model_version"] for i in instances} == {model.version}
    curve = client.get(f"/api/v1/series/{SERIES}/slices", headers=reader).json()
    assert [s["tumour_score"] for s in curve["slices"]] == pytest.approx(scores)
    assert row["triage_score"] == pytest.approx(curve["series_score"])
    assert study["series"][0]["series_score"] == pytest.approx(curve["series_score"])


def _record_feedback(client: TestClient, reader: dict[str, str]) -> str:
    """The reader agrees with the study's label (what ``service.workflow.feedback`` records)."""
    label: str = client.get(f"/api/v1/studies/{STUDY}", headers=reader).json()["predicted_label"]
    response = client.post(f"/api/v1/studies/{STUDY}/feedback", json={"agrees": True}, headers=reader)
    assert response.status_code in (200, 201), response.json()
    return label


def _mean_abs_result_difference(settings: Settings) -> float:
    with unit_of_work(settings) as db:
        rows = db.execute(select(AnalysisResult.instance_id, AnalysisResult.model_version, AnalysisResult.tumour_score))
        by_instance: dict[uuid.UUID, dict[str, float]] = {}
        for instance_id, version, score in rows:
            by_instance.setdefault(instance_id, {})[version] = score
    return sum(abs(v["0.1.1"] - v["0.2.0"]) for v in by_instance.values()) / len(by_instance)


def test_a_shadow_job_that_ends_last_still_makes_the_results_due(
    client: TestClient, reg_settings: Settings, classifiers: dict[ModelKey, Classifier]
) -> None:
    _install_shadow(reg_settings)
    _upload_study(client, reg_settings)
    _run(reg_settings, classifiers, DEFAULT)
    with unit_of_work(reg_settings) as db:
        study = db.scalars(select(Study).where(Study.study_instance_uid == STUDY)).one()
        assert study.triage_score is not None  # the active model's triage does not wait for the shadow
    _run(reg_settings, classifiers, SHADOW)
    with unit_of_work(reg_settings) as db:
        study = db.scalars(select(Study).where(Study.study_instance_uid == STUDY)).one()
        assert study.status == StudyStatus.analysed and study.results_due_at is not None
