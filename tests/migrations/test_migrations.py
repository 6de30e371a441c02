"""Every migration runs forward and back, and the migrated schema is exactly the tables' schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import scratch_pg_database
from sqlalchemy import create_engine, inspect

from service.db.migrate import downgrade, upgrade
from service.db.tables import Base

TABLES = {"studies", "series", "instances", "analysis_jobs", "analysis_results", "slice_scores", "api_tokens"}


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
