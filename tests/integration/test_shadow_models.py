"""Two real Celery workers, one per model version, on PostgreSQL + Redis: the shadow version
scores every slice on its own queue, readers see only the active version, the agreement
endpoint pairs them, and ``sightline models promote`` flips what the worklist shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import registry_fixtures as shared
from helpers import bearer, issue_token
from registry_fixtures import DEFAULT, SHADOW, RegistryStack
from stack import StartProcess

from service.db.session import unit_of_work
from service.db.tables import Role
from service.registry.service import install
from service.settings import Settings

pytestmark = pytest.mark.integration

WORKERS = {DEFAULT: "default", SHADOW: "shadow"}  # the worker node that runs each model's jobs


@pytest.fixture()
def registry(
    pg_settings: Settings, stack_env: dict[str, str], start_process: StartProcess, tmp_path: Path
) -> Iterator[RegistryStack]:
    """The stack with the shadow manifest written beside the pinned default; deployment rows are
    removed afterwards (pg_settings empties the other tables)."""
    manifest_dir = shared.write_shadow_manifest(tmp_path / "manifests").parent
    with shared.registry_stack(pg_settings, stack_env, start_process, manifest_dir) as stack:
        yield stack


def test_a_shadow_model_scores_on_its_own_worker_and_readers_see_the_active_one(
    registry: RegistryStack, start_process: StartProcess
) -> None:
    settings, api = registry.settings, registry.api_url
    with unit_of_work(settings) as db:
        install(db, settings, SHADOW, shadow=True, rules={"modality": ["MR"]}, actor="test")
    shared.start_model_workers(start_process, registry.env, SHADOW, "shadow")
    ingest = issue_token(settings, Role.ingest)
    reader, admin = bearer(issue_token(settings, Role.reader)), bearer(issue_token(settings, Role.admin))
    first = "1.2.826.0.1.3680043.8.498.5300"
    shared.upload_series(api, ingest, first)
    shared.wait_until(lambda: shared.all_jobs_ended(settings, 6), "both models to score three slices")
    shared.assert_jobs_succeeded_on(settings, WORKERS)  # each worker ran its own model's jobs only

    before = shared.reader_view(api, reader, first)
    assert before["models"] == {(DEFAULT.name, DEFAULT.version)}
    shadow = shared.shadow_agreement(api, admin, SHADOW)
    assert (shadow["paired_instances"], shadow["paired_series"]) == (3, 1)
    assert shadow["mean_abs_tumour_score_difference"] > 1e-4  # another temperature: other scores

    shared.promote(registry, SHADOW)
    after = shared.reader_view(api, reader, first)
    assert after["models"] == {(SHADOW.name, SHADOW.version)}  # re-triaged from the stored shadow slices
    assert after["triage_score"] != pytest.approx(before["triage_score"], abs=1e-6)

    second = "1.2.826.0.1.3680043.8.498.5301"
    shared.upload_series(api, ingest, second)
    shared.wait_until(lambda: shared.all_jobs_ended(settings, 12), "both models to score the new study")
    shared.assert_jobs_succeeded_on(settings, WORKERS)
    assert shared.reader_view(api, reader, second)["models"] == {(SHADOW.name, SHADOW.version)}
