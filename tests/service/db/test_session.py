"""unit_of_work and the blob store: a failed unit removes the files it created, and only those
that no concurrent writer stored meanwhile."""

from __future__ import annotations

import pytest

from service.db.session import store_blob, unit_of_work
from service.settings import Settings
from service.storage import BlobStore


class Boom(RuntimeError):
    pass


def test_a_failed_unit_deletes_the_blob_it_created(settings: Settings) -> None:
    store = BlobStore(settings.storage_dir)
    with pytest.raises(Boom), unit_of_work(settings) as db:
        key = store_blob(db, store, b"written then abandoned")
        assert store.exists(key)
        raise Boom
    assert not store.exists(key)
    assert [p for p in settings.storage_dir.rglob("*") if p.is_file()] == []  # no temporary or tomb files


def test_a_committed_unit_keeps_its_blob(settings: Settings) -> None:
    store = BlobStore(settings.storage_dir)
    with unit_of_work(settings) as db:
        key = store_blob(db, store, b"kept")
    assert store.get(key) == b"kept"


def test_a_failed_unit_keeps_a_blob_that_a_concurrent_unit_stored_too(settings: Settings) -> None:
    """Content addressing shares files: A creates it, B stores the same bytes, A fails, B commits."""
    store = BlobStore(settings.storage_dir)
    with unit_of_work(settings) as unit_b:
        with pytest.raises(Boom), unit_of_work(settings) as unit_a:
            key = store_blob(unit_a, store, b"shared bytes")
            assert store_blob(unit_b, store, b"shared bytes") == key
            raise Boom
        assert store.exists(key)
    assert store.get(key) == b"shared bytes"


def test_a_second_put_of_the_same_bytes_creates_nothing(settings: Settings) -> None:
    store = BlobStore(settings.storage_dir)
    key, stamp = store.put(b"once")
    assert stamp is not None
    assert store.put(b"once") == (key, None)


def test_discard_after_another_put_keeps_the_file_and_stale_discards_are_harmless(settings: Settings) -> None:
    store = BlobStore(settings.storage_dir)
    key, stamp = store.put(b"contended")
    assert stamp is not None
    store.put(b"contended")  # a second writer: bumps the mtime
    store.discard(key, stamp)
    assert store.get(key) == b"contended"
    store.path_for(key).unlink()
    store.discard(key, stamp)  # already gone: nothing to do, no error
