"""Every migration runs forward and back, and the migrated schema is exactly the tables' schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import scratch_pg_database
from sqlalchemy import create_engine, inspect, text

from service.db.migrate import downgrade, upgrade
from service.db.tables import Base

TABLES = {
    "studies",
    "series",
    "instances",
    "analysis_jobs",
    "analysis_results",
    "slice_scores",
    "api_tokens",
    "result_objects",
    "feedback",
    "audit_events",
    "deliveries",
    "model_deployments",
    "explanations",
}


def _schema_drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    upgrade(url)
    assert _tables(url) == TABLES
    assert _schema_drift(url) == []
    downgrade(url, "base")
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == TABLES


def test_sqlite_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.fixture()
def empty_pg_database() -> Iterator[str]:
    with scratch_pg_database("sightline_mig") as url:
        yield url


@pytest.mark.integration
def test_postgresql_upgrade_downgrade_upgrade(empty_pg_database: str) -> None:
    _round_trip(empty_pg_database)


def _rows_survive_0002(url: str) -> None:
    """A database with 0001 data moves to 0002 (series taken as complete) and back."""
    upgrade(url, "0001")
    engine = create_engine(url)
    ids = {name: str(uuid.uuid4()) for name in ("study", "series", "instance")}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (id, study_instance_uid, synthetic, clinical_priority, status, received_at, "
                "updated_at) VALUES (:study, '1.2.3', false, 0, 'analysed', :now, :now)"
            ),
            {**ids, "now": datetime.now(UTC)},
        )
        conn.execute(
            text("INSERT INTO series (id, study_id, series_instance_uid) VALUES (:series, :study, '1.2.3.1')"), ids
        )
    upgrade(url)
    with engine.begin() as conn:
        completed = conn.execute(text("SELECT completed_at, last_instance_at, scored_slices FROM series")).one()
        assert completed[0] is not None and completed[1] is not None and completed[2] == 0
        conn.execute(
            text(
                "INSERT INTO instances (id, series_id, study_id, sop_instance_uid, source_kind, blob_key, blob_size, "
                "frame_count, received_at) VALUES (:instance, :series, :study, '1.2.3.1.1', 'dicom', 'k', 1, 0, :now)"
            ),
            {**ids, "now": datetime.now(UTC)},
        )  # an SR: no rows/columns
    downgrade(url, "0001")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT rows, columns FROM instances")).one() == (0, 0)
    engine.dispose()


def test_sqlite_data_survives_0002_up_and_down(tmp_path: Path) -> None:
    _rows_survive_0002(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.integration
def test_postgresql_data_survives_0002_up_and_down(empty_pg_database: str) -> None:
    _rows_survive_0002(empty_pg_database)


def _sort_key_backfilled_by_0006(url: str) -> None:
    """Studies from before 0006 get their worklist sort key from clinical_priority and triage_score."""
    upgrade(url, "0005")
    engine = create_engine(url)
    insert = text(
        "INSERT INTO studies (id, study_instance_uid, synthetic, clinical_priority, status, triage_score, received_at, "
        "updated_at, results_generation) VALUES (:id, :uid, false, :priority, 'analysed', :score, :now, :now, 0)"
    )
    with engine.begin() as conn:
        for uid, priority, score in (("1.1", 2, 0.25), ("1.2", 0, None)):
            conn.execute(insert, {"id": str(uuid.uuid4()), "uid": uid, "priority": priority, "score": score,
                                  "now": datetime.now(UTC)})  # fmt: skip
    upgrade(url)
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT study_instance_uid, sort_priority, sort_score FROM studies ORDER BY 1")).all()
    assert [tuple(row) for row in rows] == [("1.1", -2, -0.25), ("1.2", 0, 1.0)]
    downgrade(url, "0005")
    engine.dispose()


def test_sqlite_sort_key_backfilled_by_0006(tmp_path: Path) -> None:
    _sort_key_backfilled_by_0006(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.integration
def test_postgresql_sort_key_backfilled_by_0006(empty_pg_database: str) -> None:
    _sort_key_backfilled_by_0006(empty_pg_database)
