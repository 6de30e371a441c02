"""Store validated files: blob, study/series/instance rows and queued analysis jobs, one per
deployed model whose routing rules match (``service.registry``), each sent to its model's queue.

Runs inside the request's unit of work (``service.deps.DbSession``): it only flushes, and
the caller's commit makes the whole request durable at once; a failure rolls every row
back and ``store_blob`` makes the unit of work delete the blobs this request wrote.
The same SOP Instance UID (PS3.3 C.12.1.1.1) twice is one instance and one job.

Lock order (PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE`` anyway). Every
transaction that writes ingest rows takes its locks in this order, so concurrent uploads
(the upload API, STOW-RS, C-STORE over parallel associations) never wait on each other in
a cycle:

1. the study rows of the request, in Study Instance UID order, before any other write:
   ``INSERT ... ON CONFLICT DO NOTHING`` (it waits for a concurrent transaction that is
   inserting the same UID to finish) then ``SELECT ... FOR UPDATE`` (``lock_studies``).
   New and existing studies alike: a new study is never first seen through an instance's
   foreign key, whose KEY SHARE lock a later FOR UPDATE would have to wait on;
2. series rows, created or updated only under their study's lock (files are stored
   sorted by study, series and SOP Instance UID order of arrival);
3. instance and job rows (their foreign keys take KEY SHARE locks on rows this
   transaction already holds FOR UPDATE);
4. the studies' status and score, under the locks from 1, in study id order.

Workers and the series sweep lock one study at a time (``lock_study``), so they fit in.
A study row created in step 1 whose every instance was refused is deleted before commit.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import lru_cache
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import ModelLibraryError
from service.active_model import ModelKey
from service.db.series_state import lock_study
from service.db.session import NEW_BLOBS, begin_write, forget_new_blob, store_blob
from service.db.tables import AnalysisJob, Study, StudyStatus
from service.db.triage import recompute_locked
from service.errors import Conflict, SightlineError, model_error_status
from service.ingest.errors import RejectedFile
from service.ingest.existing import Fingerprint, Stored, check_same_instance, find_instance, find_instances
from service.ingest.reading import ParsedFile, refusing
from service.ingest.rows import RowCache, drop_empty_studies, insert_rows, lock_studies, raise_priority
from service.ingest.schemas import UploadedInstance
from service.queue import enqueue_after_commit
from service.registry.service import RoutedModel, routed_models
from service.settings import Settings, get_settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)
BLOB_WRITERS = 8  # threads writing a batch's blobs (mostly waiting on fsync)
INSERT_ATTEMPTS = 2  # a lost race on a new study/series row is retried once; it then exists


def store_files(
    db: Session, store: BlobStore, files: Sequence[ParsedFile], *, priority: int | None, settings: Settings
) -> list[Stored]:
    """Store every file, raise and recompute each touched study, queue the new jobs.

    Concurrent requests touching the same studies take the study row locks in one global
    order (the module docstring): every study of the request is created if new and locked
    up front in Study Instance UID order, before any instance row is written.
    """
    begin_write(db)
    locked = lock_studies(db, files, priority)
    routed = routed_models(db, settings)
    by_index: dict[int, Stored] = {}
    for parsed in sorted(files, key=_store_order):
        with refusing(parsed.index):
            by_index[parsed.index] = store_one(db, store, parsed, priority=priority, routed=routed)
    stored = [by_index[parsed.index] for parsed in files]
    drop_empty_studies(db, locked, {item.study_id for item in stored})
    to_analyse = {item.study_id for item in stored if not item.entry.duplicate and item.entry.job_id}
    for study_id in sorted({item.study_id for item in stored}):
        raise_priority(_settle_after_ingest(db, study_id, pending=study_id in to_analyse), priority)
    _enqueue_new_jobs(db, stored, settings, background=False)
    return stored


def _enqueue_new_jobs(db: Session, stored: Sequence[Stored], settings: Settings, *, background: bool) -> None:
    """Send every new job (one per routed model) to its model's queue after the commit."""
    new_jobs = dict(job for item in stored if not item.entry.duplicate for job in item.jobs)
    enqueue_after_commit(db, list(new_jobs), settings, background=background, queues=new_jobs)


def store_each(
    db: Session, store: BlobStore, files: Sequence[ParsedFile], *, priority: int | None, settings: Settings
) -> list[Stored | SightlineError]:
    """As ``store_files``, but every file succeeds or fails on its own (C-STORE, STOW-RS).

    One transaction for the whole batch (one study lock, one commit, one publish) instead of
    one per file, and fewer round trips per file: the known SOP Instance UIDs are looked up
    in one query, the new files' blobs are written (and fsynced) in parallel threads while the
    rows are inserted, all durable before the commit, and study/series rows are looked up once
    per batch. A file's rows are inserted in their
    own SAVEPOINT (``store_one``), so a refused file changes no row; a blob that no stored
    row refers to in the end is removed before the commit. A refusal comes back as the
    ``SightlineError`` in that file's place; anything else (the database gone) raises, and the
    caller's unit of work rolls everything back and removes every blob it wrote.
    """
    begin_write(db)
    locked = lock_studies(db, files, priority)
    rows = RowCache(locked.studies)
    routed = routed_models(db, settings)
    known = find_instances(db, [parsed.meta.sop_instance_uid for parsed in files], routed[0].key)
    writes = _BlobWrites(store, [parsed.data for parsed in files if parsed.meta.sop_instance_uid not in known])
    by_index: dict[int, Stored | SightlineError] = {}
    try:
        for parsed in sorted(files, key=_store_order):
            uid = parsed.meta.sop_instance_uid
            key = None if uid in known else store.key_for(parsed.data)
            by_index[parsed.index] = _store_isolated(
                db, store, parsed, priority=priority, existing=known.get(uid), key=key, rows=rows, routed=routed
            )
    except BaseException:
        writes.finish(db, raise_failure=False)  # so that the unit of work removes the files written
        raise
    writes.finish(db)  # every blob is durable before the rows that refer to it are committed
    outcomes = [by_index[parsed.index] for parsed in files]
    stored = [item for item in outcomes if isinstance(item, Stored)]
    used = {item.fingerprint.blob_key for item in stored if not item.entry.duplicate and item.fingerprint}
    for key in [key for key in db.info.get(NEW_BLOBS, {}) if key not in used]:
        _drop_unused_blob(db, store, key)  # refused files, lost races: no row refers to it
    drop_empty_studies(db, locked, {item.study_id for item in stored})
    to_analyse = {item.study_id for item in stored if not item.entry.duplicate and item.entry.job_id}
    for study_id in sorted({item.study_id for item in stored}):
        pending = study_id in to_analyse
        study = rows.held(study_id) if pending else None  # already locked by this transaction: no re-read
        raise_priority(_settle_after_ingest(db, study_id, pending=pending, study=study), priority)
    _enqueue_new_jobs(db, stored, settings, background=True)  # the answer need not wait for the broker
    return outcomes


class _BlobWrites:
    """A batch's new blobs, written and fsynced in background threads while its rows are inserted.

    ``fsync`` releases the GIL and the file system can commit several files at once, so the
    writes overlap each other and the database round trips. ``finish`` waits for all of them
    before the commit: no row is ever committed before its blob is durable.
    """

    def __init__(self, store: BlobStore, contents: Sequence[bytes]) -> None:
        pool = _blob_writers(os.getpid())
        self.futures = [pool.submit(store.put, data) for data in dict.fromkeys(contents)]  # each content once

    def finish(self, db: Session, *, raise_failure: bool = True) -> None:
        """Wait for every write and track the files created (the unit of work removes them if it
        fails); then raise the first failed write's error."""
        wait(self.futures)
        failures = [exc for future in self.futures if (exc := future.exception()) is not None]
        for future in self.futures:
            if future.exception() is None:
                _track_blob(db, *future.result())
        if failures and raise_failure:
            raise failures[0]


@lru_cache(maxsize=1)
def _blob_writers(_pid: int) -> ThreadPoolExecutor:
    """One pool per process (keyed by pid: a forked child must not inherit the parent's threads)."""
    return ThreadPoolExecutor(max_workers=BLOB_WRITERS, thread_name_prefix="sightline-blob")


def _track_blob(db: Session, key: str, stamp: int | None) -> None:
    if stamp is not None:
        db.info.setdefault(NEW_BLOBS, {})[key] = stamp


def _store_isolated(
    db: Session,
    store: BlobStore,
    parsed: ParsedFile,
    *,
    priority: int | None,
    existing: Stored | None,
    key: str | None,
    rows: RowCache,
    routed: Sequence[RoutedModel],
) -> Stored | SightlineError:
    """``store_one`` for one file of a batch; a refusal has changed no row (see ``store_one``)."""
    try:
        return store_one(db, store, parsed, priority=priority, existing=existing, key=key, rows=rows, routed=routed)
    except SightlineError as exc:
        rows.clear()  # a rolled-back savepoint may have created the cached study or series
        return exc
    except ModelLibraryError as exc:  # a re-send whose pixels could not be compared
        return RejectedFile(str(exc), status_code=model_error_status(exc), code=exc.code)


def _settle_after_ingest(db: Session, study_id: uuid.UUID, *, pending: bool, study: Study | None = None) -> Study:
    """A study that got a new instance to analyse is pending (its series was re-opened, its
    job is queued): set it under the study lock without the full recompute, whose cost grows
    with the study and would make a 1000-slice upload quadratic. Anything else (duplicates,
    objects the model does not score) is recomputed. ``study``: the row, when this
    transaction already holds its lock (locked up front, or created here)."""
    if study is None:
        study = lock_study(db, study_id)  # first, in the caller's id order (see ``store_files``)
    if not pending:
        return recompute_locked(db, study)
    study.status = StudyStatus.pending
    db.flush()
    return study


def _store_order(parsed: ParsedFile) -> tuple[str, str, int]:
    """Files are stored grouped by study, then series (step 2 of the lock order)."""
    return parsed.meta.study_instance_uid, parsed.meta.series_instance_uid, parsed.index


_LOOK_UP: Any = object()  # ``store_one``'s ``existing`` when the caller did not look it up


def store_one(
    db: Session,
    store: BlobStore,
    parsed: ParsedFile,
    *,
    priority: int | None,
    existing: Stored | None = _LOOK_UP,
    key: str | None = None,
    rows: RowCache | None = None,
    routed: Sequence[RoutedModel] | None = None,
) -> Stored:
    """One instance: the existing one for a known SOP Instance UID, else blob + rows + job.

    Its rows are inserted in a SAVEPOINT, the only writes here: a refusal or a lost race
    rolls back this instance only. ``existing`` and ``key`` let a batch pass what it already
    looked up and the blob it already wrote (the batch then owns that blob's clean-up).
    ``routed``: the models that get jobs (``routed_models``; looked up when not given).
    """
    meta = parsed.meta
    routed = routed if routed is not None else routed_models(db, get_settings())
    if existing is _LOOK_UP:
        existing = find_instance(db, meta.sop_instance_uid, routed[0].key)
    if existing is not None:
        check_same_instance(existing, parsed, store)
        logger.info("duplicate instance", extra={"instance_id": str(existing.entry.instance_id)})
        return existing
    own_blob = key is None
    if key is None:
        key = store_blob(db, store, parsed.data)
    for _ in range(INSERT_ATTEMPTS):
        try:
            with db.begin_nested():  # SAVEPOINT: a lost race rolls back only this instance
                instance, jobs = insert_rows(
                    db, meta, key, len(parsed.data), priority, rows if rows is not None else RowCache(), routed
                )
        except IntegrityError:
            if rows is not None:
                rows.clear()  # the savepoint's new study or series rows are gone
            winner = find_instance(db, meta.sop_instance_uid, routed[0].key)
            if winner is None:
                continue  # the race was on the study or series row; it exists now
            if own_blob:
                _drop_unused_blob(db, store, key)
            check_same_instance(winner, parsed, store)
            return winner
        logger.info("instance stored", extra={"instance_id": str(instance.id), "study_id": str(instance.study_id)})
        entry = UploadedInstance(
            sop_instance_uid=meta.sop_instance_uid,
            study_instance_uid=meta.study_instance_uid,
            instance_id=instance.id,
            job_id=_active_job(jobs, routed[0]),
            duplicate=False,
            not_applicable_reason=meta.not_applicable_reason,
        )
        fingerprint = Fingerprint(meta.identity_sha256, meta.content_sha256, meta.transfer_syntax_uid, key)
        queues = {model.key: model.queue for model in routed}
        new_jobs = tuple((job.id, queues[ModelKey(job.model_name, job.model_version)]) for job in jobs)
        return Stored(entry, instance.study_id, meta.source_kind, fingerprint, new_jobs)
    raise Conflict("the instance's study or series was changed concurrently; send it again")


def _active_job(jobs: Sequence[AnalysisJob], active: RoutedModel) -> uuid.UUID | None:
    """The job the upload answer names: the active model's (``None``: its rules did not match)."""
    key = active.key
    return next((job.id for job in jobs if (job.model_name, job.model_version) == (key.name, key.version)), None)


def _drop_unused_blob(db: Session, store: BlobStore, key: str) -> None:
    """After a lost race, remove the file this request created, unless the winner stored it too."""
    stamp = forget_new_blob(db, key)
    if stamp is not None:
        store.discard(key, stamp)
