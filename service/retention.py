"""Retention: purge studies past a cutoff, then delete the blobs no remaining row references.

Blobs are content-addressed (``service.storage``), so two rows, even of two studies, can
share one file: a blob is deleted only when no row of any table still names its key. A
file goes in three steps: renamed out of reach of new ``put`` calls, the database asked
again, then unlinked, or put back if a row appeared or a ``put`` touched it meanwhile. Files
younger than a grace period are never swept: a transaction still in flight may have written
them. Left: a ``put`` that touched an old file before it was judged, by a transaction that
commits only after the deletion (``put`` bumps the mtime by 1 ns, not to now).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import ColumnElement, Select, delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.db.tables import AnalysisResult, Instance, OnDemandExplanation, ResultObject, Study, utcnow
from service.storage import BlobStore

logger = logging.getLogger(__name__)

# Every column that holds a blob key. tests/service/test_retention.py checks that no
# ``*_key`` string column of the schema is missing here.
BLOB_COLUMNS: tuple[InstrumentedAttribute[str] | InstrumentedAttribute[str | None], ...] = (
    Instance.blob_key,
    AnalysisResult.original_key,
    AnalysisResult.heatmap_key,
    AnalysisResult.overlay_key,
    AnalysisResult.contour_key,
    AnalysisResult.map_key,
    AnalysisResult.outline_key,
    ResultObject.blob_key,
    OnDemandExplanation.heatmap_key,
    OnDemandExplanation.overlay_key,
    OnDemandExplanation.contour_key,
    OnDemandExplanation.map_key,
    OnDemandExplanation.outline_key,
)
_CHUNK = 500  # keys per IN (...) query: far below SQLite's bound-parameter limit
PURGE_GRACE = timedelta(hours=1)  # as `blobs sweep`'s default: younger files may be in an open transaction
T = TypeVar("T")
_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")

# A session factory: retention re-checks references in fresh, short transactions.
Sessions = Callable[[], Session]


@dataclass(frozen=True)
class BlobReport:
    deleted: int = 0
    bytes: int = 0
    kept: int = 0  # unreferenced when looked at, referenced again before deletion (or too young)


@dataclass(frozen=True)
class PurgePlan:
    studies: int
    orphans: frozenset[str]  # keys the purged rows used and no remaining row uses


def _chunks(items: Iterable[T]) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def referenced(db: Session, keys: Collection[str]) -> set[str]:
    """The subset of ``keys`` that some row of some table still names."""
    found: set[str] = set()
    for batch in _chunks(keys):
        for column in BLOB_COLUMNS:
            found.update(db.scalars(select(column).where(column.in_(batch)).distinct()))
    return found


def _study_keys(db: Session, study_ids: ColumnElement[bool]) -> set[str]:
    """Blob keys used by the rows of the studies matched by ``study_ids`` (a WHERE on Study.id)."""
    instance_ids = select(Instance.id).join(Study, Instance.study_id == Study.id).where(study_ids)
    queries: list[Select[str] | Select[str | None]] = [
        select(Instance.blob_key).join(Study, Instance.study_id == Study.id).where(study_ids)
    ]
    queries += [
        select(column).where(AnalysisResult.instance_id.in_(instance_ids))
        for column in BLOB_COLUMNS
        if column.class_ is AnalysisResult
    ]
    queries += [
        select(column).where(OnDemandExplanation.instance_id.in_(instance_ids))
        for column in BLOB_COLUMNS
        if column.class_ is OnDemandExplanation
    ]
    queries.append(select(ResultObject.blob_key).join(Study, ResultObject.study_id == Study.id).where(study_ids))
    return {key for query in queries for key in db.scalars(query) if key}


def delete_studies(db: Session, cutoff: datetime) -> PurgePlan:
    """Delete the studies received before ``cutoff`` (their rows cascade); flush, never commit.

    The caller commits (or rolls back, for a dry run) and only then deletes ``orphans``.
    """
    old = Study.received_at < cutoff
    count = len(db.scalars(select(Study.id).where(old)).all())
    keys = _study_keys(db, old)
    db.execute(delete(Study).where(old).execution_options(synchronize_session=False))
    db.flush()
    return PurgePlan(studies=count, orphans=frozenset(keys - referenced(db, keys)))


def observe(store: BlobStore, keys: Iterable[str]) -> dict[str, int]:
    """The mtime (ns) of each existing blob file of ``keys``: what ``delete_blobs`` compares against."""
    seen = {}
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            seen[key] = store.path_for(key).stat().st_mtime_ns
    return seen


def delete_blobs(store: BlobStore, sessions: Sessions, seen: Mapping[str, int], *, dry_run: bool) -> BlobReport:
    """Delete the files of ``seen`` (key: mtime when judged unreferenced) that are still unreferenced.

    Each file is first renamed out of reach of new puts; it is put back if a row now names it
    or if a ``put`` touched it since it was judged (``BlobStore.put`` bumps the mtime).
    """
    deleted = size = kept = 0
    for batch in _chunks(sorted(seen)):
        if dry_run:
            sizes = [_size(store.path_for(key)) for key in batch if store.exists(key)]
            deleted, size = deleted + len(sizes), size + sum(sizes)
            continue
        tombs = {key: tomb for key in batch if (tomb := _bury(store.path_for(key))) is not None}
        with sessions() as db:
            wanted = referenced(db, tombs.keys())
        for key, tomb in tombs.items():
            if key in wanted or _mtime_ns(tomb) != seen[key]:
                _restore(tomb, store.path_for(key))
                kept += 1
            else:
                size += _size(tomb)
                tomb.unlink(missing_ok=True)
                deleted += 1
    return BlobReport(deleted=deleted, bytes=size, kept=kept)


def purge(
    store: BlobStore, sessions: Sessions, *, cutoff: datetime, dry_run: bool, grace: timedelta = PURGE_GRACE
) -> tuple[int, BlobReport]:
    """Purge studies received before ``cutoff``, then their orphaned blobs; (studies, blob report).

    One transaction deletes the rows; files go only after it committed, so a failure leaves
    every file a row needs. A file stored (or stored again) within ``grace`` is left for the
    sweeper: an ingest of the same bytes may still be in flight. A dry run rolls the
    transaction back and deletes nothing.
    """
    with sessions() as db:
        plan = delete_studies(db, cutoff)
        seen = observe(store, plan.orphans)
        if dry_run:
            db.rollback()
        else:
            db.commit()
    recent = time.time_ns() - int(grace.total_seconds() * 1e9)
    settled = {key: mtime for key, mtime in seen.items() if mtime < recent}
    report = delete_blobs(store, sessions, settled, dry_run=dry_run)
    report = BlobReport(deleted=report.deleted, bytes=report.bytes, kept=report.kept + len(seen) - len(settled))
    logger.info(
        "retention purge",
        extra={"studies": plan.studies, "deleted": report.deleted, "bytes": report.bytes, "dry_run": dry_run},
    )
    return plan.studies, report


def stored_blobs(store: BlobStore, older_than: datetime) -> Iterator[tuple[str, int]]:
    """(key, mtime in ns) of the blob files last written before ``older_than``; temporary files skipped."""
    if not store.root.is_dir():
        return
    limit = int(older_than.timestamp() * 1e9)
    for dirpath, _, filenames in os.walk(store.root):
        for name in filenames:
            if _BLOB_NAME.fullmatch(name) and (mtime := _mtime_ns(Path(dirpath, name))) < limit:
                yield name, mtime


def sweep(store: BlobStore, sessions: Sessions, *, grace: timedelta, dry_run: bool) -> BlobReport:
    """Delete blob files older than ``grace`` that no row references."""
    deleted = size = kept = 0
    for batch in _chunks(stored_blobs(store, utcnow() - grace)):
        with sessions() as db:
            wanted = referenced(db, [key for key, _ in batch])
        report = delete_blobs(store, sessions, {k: m for k, m in batch if k not in wanted}, dry_run=dry_run)
        deleted, size, kept = deleted + report.deleted, size + report.bytes, kept + report.kept
    logger.info("blob sweep", extra={"deleted": deleted, "bytes": size, "kept": kept, "dry_run": dry_run})
    return BlobReport(deleted=deleted, bytes=size, kept=kept)


def _bury(path: Path) -> Path | None:
    """Rename the file out of reach (a new put recreates it); None if it is already gone."""
    tomb = path.with_name(f".tomb-{uuid.uuid4().hex}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return None
    return tomb


def _restore(tomb: Path, path: Path) -> None:
    with contextlib.suppress(FileExistsError):  # a new put already wrote the same bytes
        os.link(tomb, path)
    tomb.unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1  # gone: never equal to an observed mtime
