"""unit_of_work: commit on success; on failure roll back and remove only the blobs nobody uses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom
from sqlalchemy import select

from service.db.session import track_new_blob, unit_of_work
from service.db.tables import Instance, Role
from service.settings import Settings
from service.storage import BlobStore


class Boom(RuntimeError):
    pass


def test_a_failed_unit_deletes_the_blob_it_wrote(settings: Settings) -> None:
    store = BlobStore(settings.storage_dir)
    with pytest.raises(Boom), unit_of_work(settings) as db:
        key, created = store.put(b"written then abandoned")
        assert created
        track_new_blob(db, key)
        raise Boom
    assert not store.exists(key)


def test_a_failed_unit_keeps_a_blob_that_a_committed_row_uses(
    settings: Settings, client: TestClient, tokens: dict[Role, str]
) -> None:
    """Content-addressed blobs can be shared: the rollback of one writer must not break another."""
    response = client.post(
        "/api/v1/uploads",
        files=[("files", ("a.dcm", make_mr_dicom(), "application/dicom"))],
        headers=bearer(tokens[Role.ingest]),
    )
    assert response.status_code == 202
    store = BlobStore(settings.storage_dir)
    with unit_of_work(settings) as db:
        key = db.scalars(select(Instance.blob_key)).one()
    with pytest.raises(Boom), unit_of_work(settings) as db:
        track_new_blob(db, key)  # as if this unit had raced the upload to write the same bytes
        raise Boom
    assert store.exists(key)
