"""The lost-race branch of ingest: another request commits the same SOP Instance UID first."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom
from sqlalchemy import func, select

from service.db.session import NEW_BLOBS, unit_of_work
from service.db.tables import AnalysisJob, Instance, Role
from service.ingest.dicom_meta import RasterContext
from service.ingest.reading import ParsedFile, parse_file
from service.ingest.service import store_one
from service.settings import Settings
from service.storage import BlobStore

SOP = "1.2.826.0.1.3680043.99.1"


def parsed(data: bytes) -> ParsedFile:
    meta = parse_file(data, RasterContext("1.2.3", "1.2.3.4"), 1, max_pixels=10_000_000)
    return ParsedFile(0, "race.dcm", data, meta)


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
        stored = store_one(db, store, parsed(ours), priority=None)
        assert not db.info.get(NEW_BLOBS)
    winner = store.winner
    assert stored.entry.duplicate is True
    assert str(stored.entry.instance_id) == winner["instance_id"]
    assert str(stored.entry.job_id) == winner["job_id"]
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
        assert db.scalar(select(func.count()).select_from(AnalysisJob)) == 1
        blob_key = db.scalars(select(Instance.blob_key)).one()
    files = [p for p in settings.storage_dir.rglob("*") if p.is_file()]
    assert files == [store.path_for(blob_key)]
    assert store.get(blob_key) == theirs
