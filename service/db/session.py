"""Engines and units of work. Only the request dependency and the worker commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.tables import AnalysisResult, Instance
from service.settings import Settings, get_settings
from service.storage import BlobStore

NEW_BLOBS = "sightline.new_blobs"
RESULT_BLOB_COLUMNS = (
    AnalysisResult.original_key,
    AnalysisResult.heatmap_key,
    AnalysisResult.overlay_key,
    AnalysisResult.contour_key,
)


def make_engine(database_url: str) -> Engine:
    """One engine per process; SQLite gets WAL and a busy timeout so API and worker can share it."""
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(database_url, pool_pre_ping=True, pool_size=5, max_overflow=10)


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


def track_new_blob(db: Session, key: str) -> None:
    """Remember a blob written inside this transaction; it is deleted if the transaction fails."""
    db.info.setdefault(NEW_BLOBS, []).append(key)


def forget_new_blob(db: Session, key: str) -> None:
    """Stop tracking ``key``: a committed row of another transaction owns it, or it was removed."""
    tracked = db.info.get(NEW_BLOBS, [])
    while key in tracked:
        tracked.remove(key)


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
    """Delete the blobs a failed unit wrote, unless a committed row of another unit uses them.

    Blobs are content-addressed, so two transactions can write the same file; the one that
    rolls back must not delete what the other committed. A blob that stays unreferenced in
    the narrow window between this check and another commit is an orphan, never a loss.
    """
    keys = db.info.pop(NEW_BLOBS, [])
    if not keys:
        return
    with Session(db.get_bind()) as check:
        used = set(check.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))
        for column in RESULT_BLOB_COLUMNS:
            used |= set(check.scalars(select(column).where(column.in_(keys))))
    for key in set(keys) - used:
        store.delete(key)


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
