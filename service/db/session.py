"""Engines and units of work. Only the request dependency and the worker commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings, get_settings
from service.storage import BlobStore

NEW_BLOBS = "sightline.new_blobs"  # db.info key: {blob key: creation stamp}


def make_engine(database_url: str) -> Engine:
    """One engine per process; SQLite gets WAL and a busy timeout so API and worker can share it.

    ``hide_parameters``: database errors would otherwise quote the bound values (patient
    names and IDs among them) in messages that reach the logs.
    """
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(database_url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True)


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=4)
def _factory(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(database_url), expire_on_commit=False)


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    return _factory((settings or get_settings()).database_url)


def store_blob(db: Session, store: BlobStore, data: bytes) -> str:
    """Store ``data`` as part of this unit of work: if the unit fails, the file goes too."""
    key, stamp = store.put(data)
    if stamp is not None:
        db.info.setdefault(NEW_BLOBS, {})[key] = stamp
    return key


def forget_new_blob(db: Session, key: str) -> int | None:
    """Stop tracking ``key`` (the caller decides what happens to the file); its stamp, if tracked."""
    stamp: int | None = db.info.get(NEW_BLOBS, {}).pop(key, None)
    return stamp


def begin_write(db: Session) -> None:
    """Open the transaction as a writer now: ``BEGIN IMMEDIATE`` on SQLite, nothing elsewhere.

    pysqlite only opens a transaction before INSERT/UPDATE/DELETE, so a SAVEPOINT issued
    first would itself start the transaction and its RELEASE would commit it (SQLAlchemy,
    "Serializable isolation / Savepoints" for pysqlite). Taking the write lock up front also
    serialises SQLite writers, so a read-then-insert cannot fail with SQLITE_BUSY_SNAPSHOT.
    PostgreSQL needs neither: its transactions and savepoints nest as written.
    """
    connection = db.connection()
    if connection.dialect.name != "sqlite":
        return
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _discard_new_blobs(db: Session, store: BlobStore) -> None:
    """Delete the files a failed unit created, unless another writer stored them since.

    Content addressing lets two transactions store the same file; ``BlobStore.discard``
    keeps it when anyone else put it after us (see ``service.storage``).
    """
    for key, stamp in db.info.pop(NEW_BLOBS, {}).items():
        store.discard(key, stamp)


@contextmanager
def unit_of_work(settings: Settings | None = None) -> Iterator[Session]:
    """Commit on success; on any failure roll back and remove the blobs this unit wrote."""
    settings = settings or get_settings()
    store = BlobStore(settings.storage_dir)
    db = session_factory(settings)()
    try:
        yield db
        db.commit()
        db.info.pop(NEW_BLOBS, None)
    except BaseException:
        db.rollback()
        _discard_new_blobs(db, store)
        raise
    finally:
        db.close()
