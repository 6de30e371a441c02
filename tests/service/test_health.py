"""Health endpoints are open; readiness reports each dependency; metrics count from the database."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom, make_settings
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.app import create_app
from service.db.migrate import downgrade, upgrade
from service.db.session import session_factory, unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, Role
from service.settings import Settings


def test_healthz_needs_no_token(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


READY = {"database": "ok", "schema": "current", "broker": "ok", "storage": "ok"}


def test_readyz_checks_database_schema_broker_and_storage(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": READY}


def test_readyz_is_200_degraded_when_the_broker_is_unreachable(tmp_path: Path, settings: Settings) -> None:
    """Uploads still succeed without a broker (jobs are rows; the reconciler re-sends them)."""
    dead_broker = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    with TestClient(create_app(dead_broker)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "checks": READY | {"broker": "unreachable"}}


def test_readyz_is_503_when_the_database_is_not_migrated(tmp_path: Path) -> None:
    empty = make_settings(tmp_path / "empty")  # reachable (SQLite creates the file) but no tables
    with TestClient(create_app(empty)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": READY | {"schema": "behind"}}


def test_readyz_is_503_when_the_schema_is_one_migration_behind(settings: Settings) -> None:
    downgrade(settings.database_url, "-1")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["schema"] == "behind"
    upgrade(settings.database_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json() == {"status": "ready", "checks": READY}


def test_readyz_is_200_when_the_schema_is_ahead(settings: Settings) -> None:
    """A newer release migrated first (expand, then contract): pods on this image keep serving."""
    with unit_of_work(settings) as db:
        db.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["checks"]["schema"] == "ahead"


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    gone = make_settings(tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(gone)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] | {"broker": "ok"} == READY | {"database": "unreachable", "schema": "unknown"}


def test_readyz_is_503_when_storage_is_unwritable(client: TestClient, settings: Settings) -> None:
    shutil.rmtree(settings.storage_dir)
    settings.storage_dir.write_bytes(b"")  # a file where the blob directory should be: nothing can be written
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": READY | {"storage": "unwritable"}}


def test_healthz_stays_200_when_dependencies_fail(tmp_path: Path) -> None:
    gone = make_settings(tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(gone)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_report_queue_depth_from_the_database(client: TestClient, tokens: dict[Role, str]) -> None:
    files = [("files", (f"{i}.dcm", make_mr_dicom(seed=i), "application/dicom")) for i in range(3)]
    assert client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest])).status_code == 202
    body = client.get("/metrics").text
    assert 'sightline_jobs{status="queued"} 3.0' in body
    assert 'sightline_jobs{status="succeeded"} 0.0' in body


def test_unknown_route_and_bad_query_use_the_error_shape(client: TestClient, tokens: dict[Role, str]) -> None:
    missing = client.get("/api/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = client.get("/api/v1/worklist?limit=0", headers=bearer(tokens[Role.reader]))
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error" and "limit" in bad.json()["error"]["message"]


def test_revoked_token_is_refused(client: TestClient, tokens: dict[Role, str], settings: Settings) -> None:
    from sqlalchemy import update

    from service.db.session import unit_of_work
    from service.db.tables import ApiToken, utcnow

    with unit_of_work(settings) as db:
        db.execute(update(ApiToken).where(ApiToken.role == Role.reader).values(revoked_at=utcnow()))
    response = client.get("/api/v1/worklist", headers=bearer(tokens[Role.reader]))
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    assert response.headers["www-authenticate"] == "Bearer"


def test_access_log_has_paths_without_query_strings(
    client: TestClient, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        client.get("/api/v1/worklist?patient_id=MRN-PRIVATE-42", headers=bearer(tokens[Role.reader]))
    access = [r for r in caplog.records if r.name == "sightline.access"]
    assert [(r.method, r.path, r.status) for r in access] == [("GET", "/api/v1/worklist", 200)]  # type: ignore[attr-defined]
    server_side = [r for r in caplog.records if not r.name.startswith("httpx")]  # httpx: the test's own client
    assert not any("MRN-PRIVATE-42" in r.getMessage() + str(vars(r)) for r in server_side)


def test_a_failed_commit_answers_503_and_keeps_nothing(
    client: TestClient, tokens: dict[Role, str], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit happens before the response: a client never gets 202 for an upload that was lost."""

    def disk_full(_: Session) -> None:
        raise OperationalError("COMMIT", {}, RuntimeError("disk full"))

    factory = session_factory(settings)
    event.listen(factory, "before_commit", disk_full)
    try:
        files = [("files", ("a.dcm", make_mr_dicom(patient_name="Secret^Name"), "application/dicom"))]
        response = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest]))
    finally:
        event.remove(factory, "before_commit", disk_full)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 0
    assert [p for p in settings.storage_dir.rglob("*") if p.is_file()] == []
    assert not any("Secret^Name" in str(vars(r)) for r in caplog.records)


def test_an_unreachable_broker_keeps_the_upload_for_the_reconciler(
    tmp_path: Path, settings: Settings, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The job row is committed before publishing; a failed publish is logged, not lost."""
    dead_broker = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(dead_broker)) as client:
        files = [("files", ("a.dcm", make_mr_dicom(), "application/dicom"))]
        response = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest]))
    assert response.status_code == 202
    with unit_of_work(settings) as db:
        job = db.scalars(select(AnalysisJob)).one()
        assert (job.status, job.enqueued_at is not None) == (JobStatus.queued, True)
    assert any("reconciler" in r.getMessage() for r in caplog.records if r.name == "service.queue")


def test_openapi_documents_the_error_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    def schema_ref(path: str, method: str, status: str) -> str:
        return str(paths[path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"])

    assert schema_ref("/readyz", "get", "503").endswith("/Readiness")
    assert set(spec["components"]["schemas"]["Readiness"]["properties"]) == {"status", "checks"}
    for path, method in (("/api/v1/uploads", "post"), ("/api/v1/worklist", "get"), ("/dicomweb/studies", "get")):
        assert paths[path][method]["responses"]["503"]["description"] == "database_unavailable", path
        assert schema_ref(path, method, "503").endswith("/ErrorEnvelope"), path
    assert "503" in paths["/metrics"]["get"]["responses"]
    assert "503" not in paths["/healthz"]["get"]["responses"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert {"401", "403", "413", "415", "422"} <= set(paths["/api/v1/uploads"]["post"]["responses"])
    for path in ("/api/v1/worklist", "/api/v1/studies/{study_uid}", "/api/v1/instances/{sop_uid}/{kind}.png"):
        assert schema_ref(path, "get", "422").endswith("/ErrorEnvelope"), path
    assert "image_missing" in paths["/api/v1/instances/{sop_uid}/{kind}.png"]["get"]["responses"]["404"]["description"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
