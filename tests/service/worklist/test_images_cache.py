"""The original-image route renders once into a content-addressed file cache, then serves it."""

from __future__ import annotations

from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom, upload
from sqlalchemy import select

from service.db.session import unit_of_work
from service.db.tables import Instance, Role
from service.settings import Settings
from service.storage import BlobStore
from service.worklist.images import RENDERINGS_DIR, rendering_path


def test_the_original_is_rendered_once_and_then_served_from_the_cache(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    sop = "1.2.826.0.1.3680043.8.498.4242.1.1"
    study = "1.2.826.0.1.3680043.8.498.4242"
    upload(client, tokens[Role.ingest], make_mr_dicom(study_uid=study, series_uid=f"{study}.1", sop_uid=sop))
    with unit_of_work(settings) as db:
        blob_key = db.scalar(select(Instance.blob_key).where(Instance.sop_instance_uid == sop))
    assert blob_key is not None
    store = BlobStore(settings.storage_dir)
    cached = rendering_path(store, blob_key)
    assert cached == settings.storage_dir / RENDERINGS_DIR / f"{blob_key}.png"
    assert not cached.exists()

    url = f"/api/v1/instances/{sop}/original.png"
    first = client.get(url, headers=bearer(tokens[Role.reader]))
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert cached.read_bytes() == first.content
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left behind

    store.path_for(blob_key).unlink()  # a second GET that decoded would now fail with 404 image_missing
    second = client.get(url, headers=bearer(tokens[Role.reader]))
    assert second.status_code == 200
    assert second.content == first.content


def test_without_the_blob_or_a_cached_rendering_the_image_is_missing(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    sop = "1.2.826.0.1.3680043.8.498.4343.1.1"
    study = "1.2.826.0.1.3680043.8.498.4343"
    upload(client, tokens[Role.ingest], make_mr_dicom(study_uid=study, series_uid=f"{study}.1", sop_uid=sop))
    with unit_of_work(settings) as db:
        blob_key = db.scalar(select(Instance.blob_key).where(Instance.sop_instance_uid == sop))
    assert blob_key is not None
    BlobStore(settings.storage_dir).path_for(blob_key).unlink()
    response = client.get(f"/api/v1/instances/{sop}/original.png", headers=bearer(tokens[Role.reader]))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "image_missing"
    assert not rendering_path(BlobStore(settings.storage_dir), blob_key).exists()
