"""Two real Celery workers, one per model version, on PostgreSQL + Redis: the shadow version
scores every slice on its own queue, readers see only the active version, the agreement
endpoint pairs them, and ``sightline models promote`` flips what the worklist shows."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import bearer, issue_token, mr_slice
from registry_fixtures import DEFAULT, SHADOW, write_shadow_manifest
from sqlalchemy import delete, select
from stack import ServiceProcess, StartProcess, api_argv, free_port, wait_healthy, worker_argv

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AuditEvent, JobStatus, ModelDeployment, Role
from service.queue import ANALYSIS_QUEUE
from service.registry.service import install
from service.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 180.0
SHADOW_QUEUE = f"{ANALYSIS_QUEUE}.{SHADOW}"


@pytest.fixture()
def registry_settings(pg_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """pg_settings with the shadow manifest installed (and the default pinned); deployment rows
    are removed afterwards (pg_settings empties the other tables)."""
    settings = pg_settings.model_copy(
        update={"model_manifest_dir": tmp_path / "manifests", "model_version": DEFAULT.version}
    )
    write_shadow_manifest(tmp_path / "manifests")
    yield settings
    with unit_of_work(settings) as db:
        db.execute(delete(ModelDeployment))


@pytest.fixture()
def registry_env(stack_env: dict[str, str], registry_settings: Settings) -> dict[str, str]:
    return {
        **stack_env,
        "SIGHTLINE_MODEL_MANIFEST_DIR": str(registry_settings.model_manifest_dir),
        "SIGHTLINE_MODEL_VERSION": DEFAULT.version,
    }


@pytest.fixture()
def registry_api(registry_env: dict[str, str], start_process: StartProcess) -> str:
    port = free_port()
    process = start_process("api", api_argv(port), registry_env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return url


def _start_workers(start_process: StartProcess, env: dict[str, str]) -> list[ServiceProcess]:
    default = start_process("worker-default", worker_argv("default"), env)
    shadow_argv = [SHADOW_QUEUE if arg == ANALYSIS_QUEUE else arg for arg in worker_argv("shadow")]
    shadow = start_process("worker-shadow", shadow_argv, {**env, "SIGHTLINE_WORKER_MODEL": str(SHADOW)})
    for process in (default, shadow):
        process.wait_for_log("ready.")
    return [default, shadow]


def test_a_shadow_model_scores_on_its_own_worker_and_readers_see_the_active_one(
    registry_settings: Settings, registry_env: dict[str, str], registry_api: str, start_process: StartProcess
) -> None:
    with unit_of_work(registry_settings) as db:
        install(db, registry_settings, SHADOW, shadow=True, rules={"modality": ["MR"]}, actor="test")
    _start_workers(start_process, registry_env)
    ingest = issue_token(registry_settings, Role.ingest)
    reader, admin = (
        bearer(issue_token(registry_settings, Role.reader)),
        bearer(issue_token(registry_settings, Role.admin)),
    )
    first = "1.2.826.0.1.3680043.8.498.5300"
    _upload(registry_api, ingest, first)
    _wait_until(lambda: _all_ended(registry_settings, 6), "both models to score three slices")
    jobs = _jobs(registry_settings)
    assert {(j.model_version, j.status, j.worker.split("@")[0] if j.worker else None) for j in jobs} == {
        (DEFAULT.version, JobStatus.succeeded, "default"),
        (SHADOW.version, JobStatus.succeeded, "shadow"),
    }  # each worker ran its own model's jobs only

    before = _reader_view(registry_api, reader, first)
    assert before["versions"] == {DEFAULT.version}
    report = httpx.get(f"{registry_api}/api/v1/models/agreement", headers=admin, timeout=30).json()
    (shadow,) = report["shadows"]
    assert (shadow["model"]["version"], shadow["paired_instances"], shadow["paired_series"]) == ("0.2.0", 3, 1)
    assert shadow["mean_abs_tumour_score_difference"] > 1e-4  # another temperature: other scores

    promoted = _sightline(registry_env, "models", "promote", SHADOW.name, SHADOW.version)
    assert promoted.returncode == 0, promoted.stderr
    after = _reader_view(registry_api, reader, first)
    assert after["versions"] == {SHADOW.version}  # re-triaged from the stored shadow slices
    assert after["triage_score"] != pytest.approx(before["triage_score"], abs=1e-6)

    second = "1.2.826.0.1.3680043.8.498.5301"
    _upload(registry_api, ingest, second)
    _wait_until(lambda: _all_ended(registry_settings, 12), "both models to score the new study")
    assert _reader_view(registry_api, reader, second)["versions"] == {SHADOW.version}
    with unit_of_work(registry_settings) as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "model_promote")).one()
    assert event.detail == {"from": str(DEFAULT), "to": str(SHADOW)}


def _reader_view(api_url: str, reader: dict[str, str], study_uid: str) -> dict[str, Any]:
    def analysed() -> dict[str, Any] | None:
        rows = httpx.get(f"{api_url}/api/v1/worklist", headers=reader, timeout=10).json()["items"]
        row = next((r for r in rows if r["study_instance_uid"] == study_uid), None)
        return row if row is not None and row["status"] == "analysed" else None

    row = _wait_until(analysed, f"study {study_uid} analysed on the worklist")
    study = httpx.get(f"{api_url}/api/v1/studies/{study_uid}", headers=reader, timeout=10).json()
    series = study["series"][0]
    curve = httpx.get(f"{api_url}/api/v1/series/{series['series_instance_uid']}/slices", headers=reader, timeout=10)
    assert row["triage_score"] == pytest.approx(curve.json()["series_score"])
    assert len(curve.json()["slices"]) == 3
    versions = {i["result"]["model_version"] for i in series["instances"]}
    return {"versions": versions, "triage_score": row["triage_score"]}


def _upload(api_url: str, token: str, study_uid: str) -> None:
    files = [
        ("files", (f"{n}.dcm", mr_slice(study_uid, f"{study_uid}.1", n, lesion=n == 2), "application/dicom"))
        for n in (1, 2, 3)
    ]
    response = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=bearer(token), timeout=60)
    assert response.status_code == 202, response.text


def _jobs(settings: Settings) -> list[AnalysisJob]:
    with unit_of_work(settings) as db:
        return list(db.scalars(select(AnalysisJob)))


def _all_ended(settings: Settings, count: int) -> bool:
    jobs = _jobs(settings)
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
