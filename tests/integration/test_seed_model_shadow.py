"""The issue's "done when", end to end: a model exported from a seed architecture is dropped in
with its manifest, prepared and contract-checked by ``sightline models prepare``, installed as a
shadow by ``sightline models install --shadow`` and scored by its own real Celery worker beside
the default model on PostgreSQL + Redis; readers see only the default until
``sightline models promote`` switches the study to the seed model's stored slices."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import bearer, issue_token, mr_slice
from registry_fixtures import DEFAULT
from sqlalchemy import delete, select
from stack import REPO_ROOT, StartProcess, api_argv, free_port, wait_healthy, worker_argv

from models.manifest import load_manifest
from service.active_model import ModelKey
from service.db.session import unit_of_work
from service.db.tables import (
    AnalysisJob,
    AnalysisResult,
    AuditEvent,
    DeploymentRole,
    JobStatus,
    ModelDeployment,
    Role,
    SliceScore,
)
from service.queue import ANALYSIS_QUEUE
from service.settings import Settings
from tests.training.synthetic_folder import LABELS, write_folder

pytestmark = pytest.mark.integration

WAIT_S = 90.0
SEED = ModelKey("seed-resnet-e2e", "0.9.1")
SEED_QUEUE = f"{ANALYSIS_QUEUE}.{SEED}"
STUDY_UID = "1.2.826.0.1.3680043.8.498.5400"
SLICES = (1, 2, 3)


@pytest.fixture()
def manifest_dir(tmp_path: Path) -> Path:
    """A tiny ResNet trained for two steps by the recipe's real command, exported into the folder
    that becomes ``SIGHTLINE_MODEL_MANIFEST_DIR`` (its ``.onnx`` and ``.json``, nothing else)."""
    data = write_folder(tmp_path / "labelled", per_class=6)
    out = tmp_path / "manifests"
    argv = [sys.executable, "-m", "training", "train", "--arch", "resnet", "--data", str(data), "--out", str(out),
            "--epochs", "1", "--max-steps", "2", "--width", "4", "--batch-size", "8", "--input-size", "64",
            "--labels", *LABELS, "--name", SEED.name, "--version", SEED.version]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env |= {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    trained = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert trained.returncode == 0, trained.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{SEED.name}.json", f"{SEED.name}.onnx"]
    return out


@pytest.fixture()
def seed_settings(pg_settings: Settings, manifest_dir: Path) -> Iterator[Settings]:
    settings = pg_settings.model_copy(update={"model_manifest_dir": manifest_dir, "model_version": DEFAULT.version})
    yield settings
    with unit_of_work(settings) as db:  # pg_settings empties the other tables, not the deployments
        db.execute(delete(ModelDeployment))


@pytest.fixture()
def seed_env(stack_env: dict[str, str], seed_settings: Settings) -> dict[str, str]:
    return {
        **stack_env,
        "SIGHTLINE_MODEL_MANIFEST_DIR": str(seed_settings.model_manifest_dir),
        "SIGHTLINE_MODEL_VERSION": DEFAULT.version,
    }


@pytest.fixture()
def seed_api(seed_env: dict[str, str], start_process: StartProcess) -> str:
    port = free_port()
    process = start_process("api", api_argv(port), seed_env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return url


def test_a_trained_seed_model_is_prepared_installed_as_shadow_scored_and_promoted(
    seed_settings: Settings, seed_env: dict[str, str], seed_api: str, start_process: StartProcess
) -> None:
    manifest = load_manifest(seed_settings.model_manifest_dir / f"{SEED.name}.json")
    assert (manifest.name, manifest.version, tuple(manifest.labels)) == (SEED.name, SEED.version, LABELS)

    prepared = _sightline({**seed_env, "SIGHTLINE_WORKER_MODEL": str(SEED)}, "models", "prepare")
    assert prepared.returncode == 0, prepared.stderr
    assert f"{SEED.name} {SEED.version} ready" in prepared.stdout
    installed = _sightline(seed_env, "models", "install", SEED.name, SEED.version, "--shadow")
    assert installed.returncode == 0, installed.stderr
    assert f"installed {SEED} as shadow" in installed.stdout
    with unit_of_work(seed_settings) as db:
        roles = {(r.model_name, r.model_version): r.role for r in db.scalars(select(ModelDeployment))}
    assert roles == {
        (DEFAULT.name, DEFAULT.version): DeploymentRole.active,
        (SEED.name, SEED.version): DeploymentRole.shadow,
    }

    default = start_process("worker-default", worker_argv("default"), seed_env)
    seed_argv = [SEED_QUEUE if arg == ANALYSIS_QUEUE else arg for arg in worker_argv("seed")]
    seed = start_process("worker-seed", seed_argv, {**seed_env, "SIGHTLINE_WORKER_MODEL": str(SEED)})
    for process in (default, seed):
        process.wait_for_log("ready.")

    ingest = issue_token(seed_settings, Role.ingest)
    reader = bearer(issue_token(seed_settings, Role.reader))
    admin = bearer(issue_token(seed_settings, Role.admin))
    _upload(seed_api, ingest)
    _wait_until(lambda: _all_ended(seed_settings, 2 * len(SLICES)), "both models to score every slice")
    with unit_of_work(seed_settings) as db:
        jobs = list(db.scalars(select(AnalysisJob)))
        assert {(j.model_name, j.model_version, j.status, (j.worker or "").split("@")[0]) for j in jobs} == {
            (DEFAULT.name, DEFAULT.version, JobStatus.succeeded, "default"),
            (SEED.name, SEED.version, JobStatus.succeeded, "seed"),
        }, [(j.model_name, j.status, j.error_code, j.error_message) for j in jobs]
        results = db.scalars(select(AnalysisResult).where(AnalysisResult.model_name == SEED.name)).all()
        slices = db.scalars(select(SliceScore).where(SliceScore.model_name == SEED.name)).all()
        assert len(results) == len(slices) == len(SLICES)
        for row in [*results, *slices]:
            assert row.model_version == SEED.version
            assert set(row.probabilities) == set(LABELS)
            assert sum(row.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
            assert row.label in LABELS
        assert {r.model_sha256 for r in results} == {manifest.sha256}
    expected = {key: _series_score(seed_settings, key) for key in (DEFAULT, SEED)}
    assert abs(expected[DEFAULT] - expected[SEED]) > 1e-4  # else the views below could not tell them apart

    before = _reader_view(seed_api, reader)
    assert before["models"] == {(DEFAULT.name, DEFAULT.version)}
    assert before["triage_score"] == pytest.approx(expected[DEFAULT], abs=1e-6)

    report = httpx.get(f"{seed_api}/api/v1/models/agreement", headers=admin, timeout=30)
    assert report.status_code == 200, report.text
    assert (report.json()["active"]["name"], report.json()["active"]["version"]) == (DEFAULT.name, DEFAULT.version)
    (shadow,) = report.json()["shadows"]
    assert (shadow["model"]["name"], shadow["model"]["version"]) == (SEED.name, SEED.version)
    assert (shadow["paired_instances"], shadow["paired_series"]) == (len(SLICES), 1)

    promoted = _sightline(seed_env, "models", "promote", SEED.name, SEED.version)
    assert promoted.returncode == 0, promoted.stderr
    assert "re-triaged 1 studies from stored slices" in promoted.stdout
    after = _reader_view(seed_api, reader)
    assert after["models"] == {(SEED.name, SEED.version)}
    assert after["triage_score"] == pytest.approx(expected[SEED], abs=1e-6)
    with unit_of_work(seed_settings) as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "model_promote")).one()
        assert db.scalar(select(AnalysisJob.id).where(AnalysisJob.status != JobStatus.succeeded)) is None
        assert len(db.scalars(select(AnalysisJob)).all()) == 2 * len(SLICES)  # nothing was re-run
    assert event.detail == {"from": str(DEFAULT), "to": str(SEED)}


def _series_score(settings: Settings, key: ModelKey) -> float:
    """With three slices and the window of 3 both manifests use, the series score is their mean."""
    with unit_of_work(settings) as db:
        scores = db.scalars(
            select(SliceScore.tumour_score).where(
                SliceScore.model_name == key.name, SliceScore.model_version == key.version
            )
        ).all()
    assert len(scores) == len(SLICES)
    return sum(scores) / len(scores)


def _reader_view(api_url: str, reader: dict[str, str]) -> dict[str, Any]:
    """The worklist row and the study page: whose results they show, and the triage score."""

    def analysed() -> dict[str, Any] | None:
        response = httpx.get(f"{api_url}/api/v1/worklist", headers=reader, timeout=10)
        row = next((r for r in response.json()["items"] if r["study_instance_uid"] == STUDY_UID), None)
        return row if row is not None and row["status"] == "analysed" else None

    row = _wait_until(analysed, "the study analysed on the worklist")
    study = httpx.get(f"{api_url}/api/v1/studies/{STUDY_UID}", headers=reader, timeout=10).json()
    assert study["triage_score"] == pytest.approx(row["triage_score"])
    (series,) = study["series"]
    curve = httpx.get(f"{api_url}/api/v1/series/{series['series_instance_uid']}/slices", headers=reader, timeout=10)
    assert curve.json()["series_score"] == pytest.approx(row["triage_score"])
    assert len(series["instances"]) == len(curve.json()["slices"]) == len(SLICES)
    models = {(i["result"]["model_name"], i["result"]["model_version"]) for i in series["instances"]}
    return {"models": models, "triage_score": row["triage_score"]}


def _upload(api_url: str, token: str) -> None:
    series_uid = f"{STUDY_UID}.1"
    files = [
        ("files", (f"{n}.dcm", mr_slice(STUDY_UID, series_uid, n, lesion=n == 2), "application/dicom")) for n in SLICES
    ]
    response = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=bearer(token), timeout=60)
    assert response.status_code == 202, response.text


def _all_ended(settings: Settings, count: int) -> bool:
    with unit_of_work(settings) as db:
        jobs = list(db.scalars(select(AnalysisJob)))
    return len(jobs) == count and all(j.status in (JobStatus.succeeded, JobStatus.failed) for j in jobs)


def _wait_until(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.3)
    return value


def _sightline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
