"""The issue's "done when", end to end: a model exported from a seed architecture is dropped in
with its manifest, prepared and contract-checked by ``sightline models prepare``, installed as a
shadow by ``sightline models install --shadow`` and scored by its own real Celery worker beside
the default model on PostgreSQL + Redis; readers see only the default until
``sightline models promote`` switches the study to the seed model's stored slices."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import registry_fixtures as shared
from helpers import bearer, issue_token
from registry_fixtures import DEFAULT, RegistryStack
from sqlalchemy import select
from stack import REPO_ROOT, StartProcess

from models.manifest import load_manifest
from service.active_model import ModelKey
from service.db.session import unit_of_work
from service.db.tables import AnalysisResult, DeploymentRole, JobStatus, ModelDeployment, Role, SliceScore
from service.settings import Settings
from tests.training.synthetic_folder import LABELS, write_folder

pytestmark = pytest.mark.integration

WAIT_S = 90.0
SEED = ModelKey("seed-resnet-e2e", "0.9.1")
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
def seed_stack(
    pg_settings: Settings, stack_env: dict[str, str], start_process: StartProcess, manifest_dir: Path
) -> Iterator[RegistryStack]:
    with shared.registry_stack(pg_settings, stack_env, start_process, manifest_dir) as stack:
        yield stack


def test_a_trained_seed_model_is_prepared_installed_as_shadow_scored_and_promoted(
    seed_stack: RegistryStack, start_process: StartProcess
) -> None:
    seed_settings, seed_env, seed_api = seed_stack.settings, seed_stack.env, seed_stack.api_url
    manifest = load_manifest(seed_settings.model_manifest_dir / f"{SEED.name}.json")
    assert (manifest.name, manifest.version, tuple(manifest.labels)) == (SEED.name, SEED.version, LABELS)

    prepared = shared.sightline_cli({**seed_env, "SIGHTLINE_WORKER_MODEL": str(SEED)}, "models", "prepare")
    assert prepared.returncode == 0, prepared.stderr
    assert f"{SEED.name} {SEED.version} ready" in prepared.stdout
    installed = shared.sightline_cli(seed_env, "models", "install", SEED.name, SEED.version, "--shadow")
    assert installed.returncode == 0, installed.stderr
    assert f"installed {SEED} as shadow" in installed.stdout
    with unit_of_work(seed_settings) as db:
        roles = {(r.model_name, r.model_version): r.role for r in db.scalars(select(ModelDeployment))}
    assert roles == {
        (DEFAULT.name, DEFAULT.version): DeploymentRole.active,
        (SEED.name, SEED.version): DeploymentRole.shadow,
    }

    shared.start_model_workers(start_process, seed_env, SEED, "seed")
    ingest = issue_token(seed_settings, Role.ingest)
    reader = bearer(issue_token(seed_settings, Role.reader))
    admin = bearer(issue_token(seed_settings, Role.admin))
    shared.upload_series(seed_api, ingest, STUDY_UID, SLICES)
    shared.wait_until(
        lambda: shared.all_jobs_ended(seed_settings, 2 * len(SLICES)), "both models to score every slice", WAIT_S
    )
    shared.assert_jobs_succeeded_on(seed_settings, {DEFAULT: "default", SEED: "seed"})
    with unit_of_work(seed_settings) as db:
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

    before = shared.reader_view(seed_api, reader, STUDY_UID, SLICES, WAIT_S)
    assert before["models"] == {(DEFAULT.name, DEFAULT.version)}
    assert before["triage_score"] == pytest.approx(expected[DEFAULT], abs=1e-6)

    shadow = shared.shadow_agreement(seed_api, admin, SEED)
    assert (shadow["paired_instances"], shadow["paired_series"]) == (len(SLICES), 1)

    assert "re-triaged 1 studies from stored slices" in shared.promote(seed_stack, SEED)
    after = shared.reader_view(seed_api, reader, STUDY_UID, SLICES, WAIT_S)
    assert after["models"] == {(SEED.name, SEED.version)}
    assert after["triage_score"] == pytest.approx(expected[SEED], abs=1e-6)
    jobs = shared.all_jobs(seed_settings)
    assert len(jobs) == 2 * len(SLICES)  # nothing was re-run
    assert all(j.status == JobStatus.succeeded for j in jobs)


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
