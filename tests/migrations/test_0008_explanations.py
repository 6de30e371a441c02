"""0008 adds ``explanations`` (one row per request key) and takes it away again; the schema it
makes is exactly ``OnDemandExplanation``'s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import scratch_pg_database
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service.db.migrate import downgrade, upgrade
from service.db.tables import Base

INSERT = text(
    "INSERT INTO explanations (id, instance_id, frame_index, model_name, model_version, model_sha256, method, "
    "target_label, status, attempts, requested_by, created_at) VALUES (:id, :instance, 0, 'm', '1', :sha, :method, "
    "'glioma', 'queued', 0, 'reader-a', :now)"
)


def _seed_instance(engine: Engine) -> dict[str, Any]:
    ids: dict[str, Any] = {name: str(uuid.uuid4()) for name in ("study", "series", "instance")}
    ids["now"] = datetime.now(UTC)
    statements = (
        "INSERT INTO studies (id, study_instance_uid, synthetic, clinical_priority, status, received_at, updated_at, "
        "results_generation, sort_priority, sort_score) VALUES (:study, '1.2.3', false, 0, 'analysed', :now, :now, "
        "0, 0, 1.0)",
        "INSERT INTO series (id, study_id, series_instance_uid, last_instance_at, scored_slices) "
        "VALUES (:series, :study, '1.2.3.1', :now, 0)",
        "INSERT INTO instances (id, series_id, study_id, sop_instance_uid, source_kind, blob_key, blob_size, "
        "frame_count, received_at) VALUES (:instance, :series, :study, '1.2.3.1.1', 'dicom', 'k', 1, 1, :now)",
    )
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), ids)
    return ids


def _explanation_drift(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    return [diff for diff in diffs if "explanations" in repr(diff)]


def _round_trip_0008(url: str) -> None:
    upgrade(url, "0007")
    engine = create_engine(url)
    assert "explanations" not in inspect(engine).get_table_names()
    ids = _seed_instance(engine)
    upgrade(url, "0008")
    assert _explanation_drift(url) == []
    inspector = inspect(create_engine(url))
    unique = {u["name"]: u["column_names"] for u in inspector.get_unique_constraints("explanations")}
    assert unique == {
        "uq_explanations_request": [
            "instance_id", "frame_index", "model_name", "model_version", "method", "target_label",
        ]
    }  # fmt: skip
    assert {i["name"] for i in inspector.get_indexes("explanations")} >= {"ix_explanations_status_enqueued_at"}
    row = {"instance": ids["instance"], "sha": "ab" * 32, "now": ids["now"]}
    with engine.begin() as conn:
        conn.execute(INSERT, {**row, "id": str(uuid.uuid4()), "method": "hirescam"})
        conn.execute(INSERT, {**row, "id": str(uuid.uuid4()), "method": "gradcam"})
    with pytest.raises(IntegrityError, match=r"(?i)unique"), engine.begin() as conn:
        conn.execute(INSERT, {**row, "id": str(uuid.uuid4()), "method": "hirescam"})
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM explanations")).scalar() == 2
    downgrade(url, "0007")
    assert "explanations" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # the rest of the database is untouched
        assert conn.execute(text("SELECT sop_instance_uid FROM instances")).scalar() == "1.2.3.1.1"
    upgrade(url)
    assert "explanations" in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_0008_up_and_down(tmp_path: Path) -> None:
    _round_trip_0008(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.fixture()
def empty_pg_database() -> Iterator[str]:
    with scratch_pg_database("sightline_m8") as url:
        yield url


@pytest.mark.integration
def test_postgresql_0008_up_and_down(empty_pg_database: str) -> None:
    _round_trip_0008(empty_pg_database)
