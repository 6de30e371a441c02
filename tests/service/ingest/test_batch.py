"""A batch of DICOM instances (a STOW-RS request) in one transaction: each still stands alone.

``store_batch`` stores many instances with one commit, a SAVEPOINT each; these tests hold
it to what one unit of work per instance guaranteed: a refused instance changes nothing and
leaves no file, the others are stored, and nothing is answered as stored before the commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import dicom_variant, mr_slice
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, Series, Study, StudyStatus
from service.ingest import service as ingest_service
from service.ingest import single
from service.ingest.single import store_batch, store_instance
from service.settings import Settings
from service.storage import BlobStore

STUDY = "1.2.826.0.1.9100"
SERIES = f"{STUDY}.1"


def blob_files(settings: Settings) -> set[Path]:
    return {path for path in settings.storage_dir.rglob("*") if path.is_file()}


def counts(settings: Settings) -> tuple[int, int, int, int]:
    with unit_of_work(settings) as db:
        return (
            db.scalar(select(func.count()).select_from(Study)) or 0,
            db.scalar(select(func.count()).select_from(Series)) or 0,
            db.scalar(select(func.count()).select_from(Instance)) or 0,
            db.scalar(select(func.count()).select_from(AnalysisJob)) or 0,
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    name = "settings" if request.param == "sqlite" else "pg_settings"
    settings: Settings = request.getfixturevalue(name)
    return settings


def test_a_batch_is_stored_in_order_with_one_job_each(any_settings: Settings) -> None:
    files = [mr_slice(STUDY, SERIES, number) for number in range(1, 6)]
    results = store_batch(any_settings, files)
    assert [result.status_code for result in results] == [200] * 5
    assert [result.entry.sop_instance_uid for result in results if result.entry] == [
        f"{SERIES}.{number}" for number in range(1, 6)
    ]
    assert counts(any_settings) == (1, 1, 5, 5)
    assert len(blob_files(any_settings)) == 5
    with unit_of_work(any_settings) as db:
        study = db.scalars(select(Study)).one()
        assert study.status == StudyStatus.pending
        stored = {row.blob_key for row in db.scalars(select(Instance))}
    store = BlobStore(any_settings.storage_dir)
    assert {store.path_for(key) for key in stored} == blob_files(any_settings)


def test_a_refused_instance_fails_alone_and_leaves_no_file(any_settings: Settings) -> None:
    first = mr_slice(STUDY, SERIES, 1)
    assert store_instance(any_settings, first).stored
    files = [
        mr_slice(STUDY, SERIES, 2),
        dicom_variant(first, PatientID="OTHER"),  # same SOP Instance UID, other patient: conflict
        mr_slice(STUDY, SERIES, 3, PatientID="SOMEONE-ELSE"),  # new instance, study of another patient
        b"not dicom at all",
        first,  # an identical re-send: a duplicate, stored once
        mr_slice(STUDY, SERIES, 4),
    ]
    results = store_batch(any_settings, files)
    assert [(result.status_code, result.code) for result in results] == [
        (200, None),
        (409, "instance_conflict"),
        (409, "study_patient_mismatch"),
        (415, "unsupported_media_type"),
        (200, None),
        (200, None),
    ]
    assert results[4].entry is not None and results[4].entry.duplicate
    assert counts(any_settings) == (1, 1, 3, 3)
    with unit_of_work(any_settings) as db:
        stored = {row.blob_key for row in db.scalars(select(Instance))}
    store = BlobStore(any_settings.storage_dir)
    assert {store.path_for(key) for key in stored} == blob_files(any_settings)  # no orphan file


def test_the_same_instance_twice_in_one_batch_is_one_instance(any_settings: Settings) -> None:
    data = mr_slice(STUDY, SERIES, 1)
    changed = dicom_variant(data, PatientName="Other^Name")
    results = store_batch(any_settings, [data, data, changed])
    assert [result.status_code for result in results] == [200, 200, 409]
    assert results[0].entry is not None and not results[0].entry.duplicate
    assert results[1].entry is not None and results[1].entry.duplicate
    assert results[0].entry.instance_id == results[1].entry.instance_id
    assert counts(any_settings) == (1, 1, 1, 1)
    assert len(blob_files(any_settings)) == 1


def test_a_new_study_whose_first_instance_is_refused_is_created_by_the_next(any_settings: Settings) -> None:
    other_series = f"{STUDY}.2"
    assert store_instance(any_settings, mr_slice("1.2.826.0.1.9101", other_series, 1)).stored
    files = [
        mr_slice(STUDY, other_series, 2),  # new study, but its series belongs to another study: refused
        mr_slice(STUDY, SERIES, 1),
    ]
    results = store_batch(any_settings, files)
    assert [result.status_code for result in results] == [409, 200]
    assert counts(any_settings) == (2, 2, 2, 2)
    with unit_of_work(any_settings) as db:
        study = db.scalars(select(Study).where(Study.study_instance_uid == STUDY)).one()
        assert study.status == StudyStatus.pending


def test_a_failed_commit_refuses_every_instance_and_removes_their_files(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest_service.enqueue_after_commit

    def database_gone(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise OperationalError("COMMIT", {}, Exception("connection lost"))

    monkeypatch.setattr(ingest_service, "enqueue_after_commit", database_gone)
    results = store_batch(pg_settings, [mr_slice(STUDY, SERIES, number) for number in (1, 2)])
    assert [(result.status_code, result.code) for result in results] == [(503, "database_unavailable")] * 2
    assert counts(pg_settings) == (0, 0, 0, 0)
    assert blob_files(pg_settings) == set()


def test_a_failed_blob_write_refuses_the_batch_and_removes_the_other_files(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [mr_slice(STUDY, SERIES, number) for number in (1, 2, 3)]
    doomed = BlobStore.key_for(files[1])
    real_put = BlobStore.put

    def failing_put(self: BlobStore, data: bytes) -> tuple[str, int | None]:
        if BlobStore.key_for(data) == doomed:
            raise OSError("disk full")
        return real_put(self, data)

    monkeypatch.setattr(BlobStore, "put", failing_put)
    with pytest.raises(OSError, match="disk full"):
        store_batch(settings, files)
    assert counts(settings) == (0, 0, 0, 0)
    assert blob_files(settings) == set()


def test_a_large_batch_is_committed_in_chunks_each_standing_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(single, "BATCH_INSTANCES", 2)
    files = [mr_slice(STUDY, SERIES, number) for number in range(1, 6)]
    files[3] = b"not dicom at all"
    results = store_batch(settings, files)
    assert [result.status_code for result in results] == [200, 200, 200, 415, 200]
    assert counts(settings) == (1, 1, 4, 4)
    assert len(blob_files(settings)) == 4
