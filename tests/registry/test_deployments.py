"""Install, promote and retire: roles, refusals, audit events, queues, the reconciler and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, issue_token, mr_slice
from kombu import Connection
from registry_fixtures import DEFAULT, SHADOW
from sqlalchemy import select

from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AuditEvent, DeploymentRole, JobStatus, ModelDeployment, Role, utcnow
from service.errors import Conflict
from service.queue import ANALYSIS_QUEUE, analysis_queue
from service.registry.service import DeploymentNotFound, install, promote, retire, routed_models
from service.settings import Settings
from worker.reconcile import reconcile_jobs

SHADOW_QUEUE = "analysis.detect-tumor-vgg16@0.2.0"
STUDY = "1.2.826.0.1.3680043.8.498.5200"


def _roles(settings: Settings) -> dict[str, DeploymentRole]:
    with unit_of_work(settings) as db:
        return {row.model_version: row.role for row in db.scalars(select(ModelDeployment))}


def test_each_model_has_its_own_queue_and_the_configured_one_keeps_analysis(reg_settings: Settings) -> None:
    assert analysis_queue(DEFAULT, reg_settings) == ANALYSIS_QUEUE
    assert analysis_queue(SHADOW, reg_settings) == SHADOW_QUEUE
    with unit_of_work(reg_settings) as db:
        install(db, reg_settings, SHADOW, shadow=True, rules={"modality": ["MR"]}, actor="a")
        routed = routed_models(db, reg_settings)
    assert [(r.key, r.role, r.queue, r.rules) for r in routed] == [
        (DEFAULT, DeploymentRole.active, ANALYSIS_QUEUE, {}),
        (SHADOW, DeploymentRole.shadow, SHADOW_QUEUE, {"modality": ["MR"]}),
    ]


def test_the_first_shadow_install_pins_the_configured_model_as_active(reg_settings: Settings) -> None:
    with unit_of_work(reg_settings) as db:
        install(db, reg_settings, SHADOW, shadow=True, rules={}, actor="a")
    assert _roles(reg_settings) == {"0.1.1": DeploymentRole.active, "0.2.0": DeploymentRole.shadow}


def test_refusals_name_the_problem(reg_settings: Settings) -> None:
    with unit_of_work(reg_settings) as db:
        with pytest.raises(DeploymentNotFound, match=r"detect-tumor-vgg16@0\.2\.0 is not installed"):
            promote(db, reg_settings, SHADOW, actor="a")
        install(db, reg_settings, SHADOW, shadow=True, rules={}, actor="a")
        with pytest.raises(Conflict, match="already installed"):
            install(db, reg_settings, SHADOW, shadow=True, rules={}, actor="a")
        with pytest.raises(Conflict, match="is already active"):
            promote(db, reg_settings, DEFAULT, actor="a")
        with pytest.raises(Conflict, match="is active; promote another version first"):
            retire(db, reg_settings, DEFAULT, actor="a")
    with unit_of_work(reg_settings) as db:
        db.delete(db.scalars(select(ModelDeployment).where(ModelDeployment.model_version == "0.2.0")).one())
    with unit_of_work(reg_settings) as db, pytest.raises(Conflict, match=r"install \S+ with --shadow, then promote"):
        install(db, reg_settings, SHADOW, shadow=False, rules={}, actor="a")


def test_retire_stops_new_jobs_and_cancels_queued_ones(reg_settings: Settings) -> None:
    with TestClient(create_app(reg_settings)) as client:
        with unit_of_work(reg_settings) as db:
            install(db, reg_settings, SHADOW, shadow=True, rules={}, actor="a")
        _upload(client, reg_settings, 1)
        with unit_of_work(reg_settings) as db:
            assert retire(db, reg_settings, SHADOW, actor="ops") == 1
        _upload(client, reg_settings, 2)
    with unit_of_work(reg_settings) as db:
        jobs = [(j.model_version, j.status, j.error_code) for j in db.scalars(select(AnalysisJob))]
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "model_retire")).one()
    assert sorted(jobs) == [
        ("0.1.1", JobStatus.queued, None),
        ("0.1.1", JobStatus.queued, None),
        ("0.2.0", JobStatus.failed, "model_retired"),
    ]
    assert (event.actor, event.detail) == ("ops", {"model": str(SHADOW), "cancelled_jobs": 1})


def test_the_reconciler_resends_each_job_to_its_models_queue(reg_settings: Settings) -> None:
    with TestClient(create_app(reg_settings)) as client:
        with unit_of_work(reg_settings) as db:
            install(db, reg_settings, SHADOW, shadow=True, rules={}, actor="a")
        _upload(client, reg_settings, 1)
    _drain(reg_settings, ANALYSIS_QUEUE), _drain(reg_settings, SHADOW_QUEUE)  # the ingest's own messages
    later = utcnow() + timedelta(seconds=reg_settings.job_deadline_seconds + 1)
    assert reconcile_jobs(reg_settings, now=later).requeued == 2
    with unit_of_work(reg_settings) as db:
        job_of = {j.model_version: str(j.id) for j in db.scalars(select(AnalysisJob))}
    assert _drain(reg_settings, ANALYSIS_QUEUE) == [job_of["0.1.1"]]
    assert _drain(reg_settings, SHADOW_QUEUE) == [job_of["0.2.0"]]


def test_cli_install_promote_list_and_agreement(reg_settings: Settings) -> None:
    install_run = _sightline(reg_settings, "models", "install", SHADOW.name, SHADOW.version, "--shadow",
                             "--route", "modality=MR", "--route", "series_description=*T1*")  # fmt: skip
    assert install_run.returncode == 0, install_run.stderr
    assert "installed detect-tumor-vgg16@0.2.0 as shadow" in install_run.stdout
    bad = _sightline(reg_settings, "models", "install", "x", "1", "--shadow", "--route", "colour=red")
    assert bad.returncode == 1 and "unknown routing attribute 'colour'" in bad.stderr
    listing = _sightline(reg_settings, "models", "list").stdout.splitlines()
    assert listing[0].startswith("* detect-tumor-vgg16 0.1.1 ") and listing[0].endswith("role=active")
    assert listing[1].startswith("  detect-tumor-vgg16 0.2.0 ") and listing[1].endswith("role=shadow")
    promoted = _sightline(reg_settings, "models", "promote", SHADOW.name, SHADOW.version)
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted detect-tumor-vgg16@0.2.0 (was detect-tumor-vgg16@0.1.1, now shadow)" in promoted.stdout
    assert _roles(reg_settings) == {"0.1.1": DeploymentRole.shadow, "0.2.0": DeploymentRole.active}
    with unit_of_work(reg_settings) as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "model_promote")).one()
        rules = db.scalars(select(ModelDeployment.routing_rules).where(ModelDeployment.model_version == "0.2.0"))
        assert rules.one() == {"modality": ["MR"], "series_description": ["*T1*"]}
    assert event.actor.startswith("cli:") and event.detail == {"from": str(DEFAULT), "to": str(SHADOW)}
    agreement = _sightline(reg_settings, "models", "agreement")
    assert agreement.returncode == 0 and '"version": "0.2.0"' in agreement.stdout


def _upload(client: TestClient, settings: Settings, number: int) -> None:
    data = mr_slice(STUDY, f"{STUDY}.1", number)
    response = client.post(
        "/api/v1/uploads",
        files=[("files", ("a.dcm", data, "application/dicom"))],
        headers=bearer(issue_token(settings, Role.ingest)),
    )
    assert response.status_code == 202, response.json()


def _drain(settings: Settings, queue_name: str) -> list[str]:
    """The job ids of every message waiting in ``queue_name`` (removed)."""
    job_ids: list[str] = []
    with Connection(settings.broker_url) as conn, conn.SimpleQueue(queue_name) as queue:
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                return job_ids
            job_ids.append(str(message.decode()[0][0]))
            message.ack()


def _sightline(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(
        SIGHTLINE_DATABASE_URL=settings.database_url,
        SIGHTLINE_BROKER_URL=settings.broker_url,
        SIGHTLINE_STORAGE_DIR=str(settings.storage_dir),
        SIGHTLINE_MODEL_MANIFEST_DIR=str(settings.model_manifest_dir),
        SIGHTLINE_MODEL_VERSION=DEFAULT.version,
    )
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
