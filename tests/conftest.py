"""Shared fixtures: real databases built by Alembic, real brokers, tokens per role.

Two backends:
- the embedded default (SQLite file + SQLite-backed broker) for API tests: always available;
- PostgreSQL + Redis for tests marked ``integration``. They are skipped, loudly, when the
  services are absent on a developer machine, and fail instead of skipping when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import REDIS_URL, StartListener, issue_token, make_settings, scratch_pg_database, services_available
from sqlalchemy import create_engine, text

from service.app import create_app
from service.db.migrate import upgrade
from service.db.tables import Role
from service.dicom.listener import make_listener
from service.settings import Settings

SKIPPED_INTEGRATION: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if services_available():
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("CI must run the integration tests: PostgreSQL or Redis is not reachable")
    marker = pytest.mark.skip(reason="PostgreSQL/Redis not reachable on 127.0.0.1")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(marker)
            SKIPPED_INTEGRATION.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SKIPPED_INTEGRATION:
        terminalreporter.section("INTEGRATION TESTS SKIPPED (no PostgreSQL/Redis)", sep="!", red=True)
        for nodeid in SKIPPED_INTEGRATION:
            terminalreporter.line(f"SKIPPED {nodeid}", red=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per run; each test gets a copy (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "sightline.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture()
def settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    shutil.copy(sqlite_template, tmp_path / "sightline.db")
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, built by Alembic, dropped at the end."""
    with scratch_pg_database("sightline_test") as url:
        upgrade(url)
        yield url
        from service.db.session import _factory

        _factory.cache_clear()


@pytest.fixture()
def pg_settings(tmp_path: Path, pg_database_url: str) -> Iterator[Settings]:
    """PostgreSQL + Redis settings; every table is emptied after the test."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = make_settings(tmp_path, database_url=pg_database_url, broker_url=REDIS_URL)
    yield settings
    engine = create_engine(pg_database_url)
    with engine.begin() as conn:
        tables = "analysis_results, analysis_jobs, instances, series, studies, api_tokens, model_deployments"
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture()
def tokens(settings: Settings) -> dict[Role, str]:
    return {role: issue_token(settings, role) for role in Role}


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture()
def start_listener() -> Iterator[StartListener]:
    """Start a listener with these settings; its port. Every one is shut down after the test."""
    stops: list[Callable[[], None]] = []

    def start(settings: Settings) -> int:
        server = make_listener(settings, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        stops.append(server.shutdown)
        return int(server.server_address[1])

    yield start
    for stop in stops:
        stop()
