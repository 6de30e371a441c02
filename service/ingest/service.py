"""Store validated files: blob, study/series/instance rows and a queued analysis job each.

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
   inserting the same UID to finish) then ``SELECT ... FOR UPDATE`` (``_lock_studies``).
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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import ModelLibraryError
from models.pixels import read_dicom
from service.db.series_state import lock_study
from service.db.session import NEW_BLOBS, begin_write, forget_new_blob, store_blob
from service.db.tables import AnalysisJob, Instance, JobStatus, Series, Study, StudyStatus, utcnow
from service.db.triage import recompute_locked
from service.errors import Conflict, SightlineError, model_error_status
from service.ingest.dicom_meta import InstanceMeta
from service.ingest.errors import InstanceConflict, RejectedFile, StudyPatientMismatch
from service.ingest.fingerprint import same_decoded_pixels
from service.ingest.reading import ParsedFile, refusing
from service.ingest.schemas import UploadedInstance
from service.queue import enqueue_after_commit
from service.settings import Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)
BLOB_WRITERS = 8  # threads writing a batch's blobs (mostly waiting on fsync)
INSERT_ATTEMPTS = 2  # a lost race on a new study/series row is retried once; it then exists


@dataclass(frozen=True)
class Fingerprint:
    """What a stored instance is compared on when its SOP Instance UID is sent again."""

    identity_sha256: str | None
    content_sha256: str | None
    transfer_syntax_uid: str | None
    blob_key: str


@dataclass(frozen=True)
class Stored:
    """What one file became: new or existing rows."""

    entry: UploadedInstance
    study_id: uuid.UUID
    source_kind: str
    fingerprint: Fingerprint | None = None


def store_files(
    db: Session, store: BlobStore, files: Sequence[ParsedFile], *, priority: int | None, settings: Settings
) -> list[Stored]:
    """Store every file, raise and recompute each touched study, queue the new jobs.

    Concurrent requests touching the same studies take the study row locks in one global
    order (the module docstring): every study of the request is created if new and locked
    up front in Study Instance UID order, before any instance row is written.
    """
    begin_write(db)
    locked = _lock_studies(db, files, priority)
    by_index: dict[int, Stored] = {}
    for parsed in sorted(files, key=_store_order):
        with refusing(parsed.index):
            by_index[parsed.index] = store_one(db, store, parsed, priority=priority)
    stored = [by_index[parsed.index] for parsed in files]
    _drop_empty_studies(db, locked, stored)
    to_analyse = {item.study_id for item in stored if not item.entry.duplicate and item.entry.job_id}
    for study_id in sorted({item.study_id for item in stored}):
        _raise_priority(_settle_after_ingest(db, study_id, pending=study_id in to_analyse), priority)
    new_jobs = [item.entry.job_id for item in stored if not item.entry.duplicate and item.entry.job_id]
    enqueue_after_commit(db, new_jobs, settings)
    return stored


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
    locked = _lock_studies(db, files, priority)
    rows = _RowCache(locked.studies)
    known = find_instances(db, [parsed.meta.sop_instance_uid for parsed in files])
    writes = _BlobWrites(store, [parsed.data for parsed in files if parsed.meta.sop_instance_uid not in known])
    by_index: dict[int, Stored | SightlineError] = {}
    try:
        for parsed in sorted(files, key=_store_order):
            uid = parsed.meta.sop_instance_uid
            key = None if uid in known else store.key_for(parsed.data)
            by_index[parsed.index] = _store_isolated(
                db, store, parsed, priority=priority, existing=known.get(uid), key=key, rows=rows
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
    _drop_empty_studies(db, locked, stored)
    to_analyse = {item.study_id for item in stored if not item.entry.duplicate and item.entry.job_id}
    for study_id in sorted({item.study_id for item in stored}):
        pending = study_id in to_analyse
        study = rows.held(study_id) if pending else None  # already locked by this transaction: no re-read
        _raise_priority(_settle_after_ingest(db, study_id, pending=pending, study=study), priority)
    new_jobs = [item.entry.job_id for item in stored if not item.entry.duplicate and item.entry.job_id]
    enqueue_after_commit(db, new_jobs, settings, background=True)  # the answer need not wait for the broker
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
    rows: _RowCache,
) -> Stored | SightlineError:
    """``store_one`` for one file of a batch; a refusal has changed no row (see ``store_one``)."""
    try:
        return store_one(db, store, parsed, priority=priority, existing=existing, key=key, rows=rows)
    except SightlineError as exc:
        rows.clear()  # a rolled-back savepoint may have created the cached study or series
        return exc
    except ModelLibraryError as exc:  # a re-send whose pixels could not be compared
        return RejectedFile(str(exc), status_code=model_error_status(exc), code=exc.code)


class _RowCache:
    """Study and series rows already read or created in this batch, by UID (one SELECT each).

    The studies the batch locked up front (``_lock_studies``) and the ones it created stay
    locked by this transaction: ``held`` returns those, so settling needs no second lock.
    """

    def __init__(self, locked: Sequence[Study] = ()) -> None:
        self._locked = {study.study_instance_uid: study for study in locked}
        self.studies: dict[str, Study] = dict(self._locked)
        self.series: dict[str, Series] = {}
        self.created: dict[uuid.UUID, Study] = {}

    def clear(self) -> None:
        """After a rolled-back SAVEPOINT: forget every row it may have created or changed."""
        self.studies = dict(self._locked)
        self.series.clear()
        self.created.clear()

    def held(self, study_id: uuid.UUID) -> Study | None:
        if study_id in self.created:
            return self.created[study_id]
        return next((study for study in self._locked.values() if study.id == study_id), None)


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


@dataclass(frozen=True)
class _LockedStudies:
    """The request's study rows, locked FOR UPDATE; ``created``: the ids this transaction inserted."""

    studies: list[Study]
    created: frozenset[uuid.UUID]


def _store_order(parsed: ParsedFile) -> tuple[str, str, int]:
    """Files are stored grouped by study, then series (step 2 of the lock order)."""
    return parsed.meta.study_instance_uid, parsed.meta.series_instance_uid, parsed.index


def _lock_studies(db: Session, files: Sequence[ParsedFile], priority: int | None) -> _LockedStudies:
    """Step 1 of the lock order: create each new study row, lock every one, in UID order.

    ``INSERT ... ON CONFLICT DO NOTHING`` creates the row from the first file of that study
    (or waits for a concurrent transaction creating it, then does nothing); ``SELECT ...
    FOR UPDATE`` then holds it to the end of the transaction.
    """
    first: dict[str, InstanceMeta] = {}
    for parsed in sorted(files, key=lambda item: item.index):
        first.setdefault(parsed.meta.study_instance_uid, parsed.meta)
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    studies: list[Study] = []
    created: set[uuid.UUID] = set()
    for uid in sorted(first):
        meta, new_id = first[uid], uuid.uuid4()
        values = {"id": new_id, "study_instance_uid": uid, "synthetic": meta.synthetic, **_study_values(meta)}
        values["clinical_priority"] = priority or 0
        result = db.execute(
            insert(Study).values(**values).on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
        study = db.scalars(
            select(Study)
            .where(Study.study_instance_uid == uid)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        if getattr(result, "rowcount", 0) == 1 and study.id == new_id:
            created.add(new_id)
        studies.append(study)
    return _LockedStudies(studies, frozenset(created))


def _drop_empty_studies(db: Session, locked: _LockedStudies, stored: Sequence[Stored]) -> None:
    """Delete the study rows this transaction created for files that were all refused."""
    used = {item.study_id for item in stored}
    empty = [study for study in locked.studies if study.id in locked.created and study.id not in used]
    for study in empty:
        db.delete(study)
    if empty:
        db.flush()


def _study_values(meta: InstanceMeta) -> dict[str, Any]:
    return {
        "patient_id": meta.patient_id,
        "patient_name": meta.patient_name,
        "accession_number": meta.accession_number,
        "study_date": meta.study_date,
        "study_time": meta.study_time,
        "modality": meta.modality,
        "body_part": meta.body_part,
        "description": meta.study_description,
    }


def _raise_priority(study: Study, priority: int | None) -> None:
    """The request's priority applies to every study it touched, duplicates included; never lowers."""
    if priority is not None and priority > study.clinical_priority:
        study.clinical_priority = priority


_LOOK_UP: Any = object()  # ``store_one``'s ``existing`` when the caller did not look it up


def store_one(
    db: Session,
    store: BlobStore,
    parsed: ParsedFile,
    *,
    priority: int | None,
    existing: Stored | None = _LOOK_UP,
    key: str | None = None,
    rows: _RowCache | None = None,
) -> Stored:
    """One instance: the existing one for a known SOP Instance UID, else blob + rows + job.

    Its rows are inserted in a SAVEPOINT, the only writes here: a refusal or a lost race
    rolls back this instance only. ``existing`` and ``key`` let a batch pass what it already
    looked up and the blob it already wrote (the batch then owns that blob's clean-up).
    """
    meta = parsed.meta
    if existing is _LOOK_UP:
        existing = find_instance(db, meta.sop_instance_uid)
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
                instance, job = _insert_rows(
                    db, meta, key, len(parsed.data), priority, rows if rows is not None else _RowCache()
                )
        except IntegrityError:
            if rows is not None:
                rows.clear()  # the savepoint's new study or series rows are gone
            winner = find_instance(db, meta.sop_instance_uid)
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
            job_id=job.id if job else None,
            duplicate=False,
            not_applicable_reason=meta.not_applicable_reason,
        )
        fingerprint = Fingerprint(meta.identity_sha256, meta.content_sha256, meta.transfer_syntax_uid, key)
        return Stored(entry, instance.study_id, meta.source_kind, fingerprint)
    raise Conflict("the instance's study or series was changed concurrently; send it again")


def find_instances(db: Session, sop_instance_uids: Sequence[str]) -> dict[str, Stored]:
    """The stored instances among these SOP Instance UIDs, in one query (see ``find_instance``)."""
    found: dict[str, Stored] = {}
    for row in db.execute(_instance_query().where(Instance.sop_instance_uid.in_(sorted(set(sop_instance_uids))))):
        found[row.sop_instance_uid] = _as_duplicate(row)
    return found


def find_instance(db: Session, sop_instance_uid: str) -> Stored | None:
    """The stored instance with this SOP Instance UID, answered as a duplicate."""
    row = db.execute(_instance_query().where(Instance.sop_instance_uid == sop_instance_uid)).first()
    return None if row is None else _as_duplicate(row)


def _instance_query() -> Select[*tuple[Any, ...]]:
    return (
        select(Instance.id, Instance.study_id, Instance.source_kind, Instance.blob_key, Instance.not_applicable_reason,
               Instance.identity_sha256, Instance.content_sha256, Instance.transfer_syntax_uid,
               Instance.sop_instance_uid, Study.study_instance_uid, AnalysisJob.id.label("job_id"))
        .join(Study, Study.id == Instance.study_id)
        .outerjoin(AnalysisJob, AnalysisJob.instance_id == Instance.id)
    )  # fmt: skip


def _as_duplicate(row: Row[Any]) -> Stored:
    entry = UploadedInstance(
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        instance_id=row.id,
        job_id=row.job_id,
        duplicate=True,
        not_applicable_reason=row.not_applicable_reason,
    )
    fingerprint = Fingerprint(row.identity_sha256, row.content_sha256, row.transfer_syntax_uid, row.blob_key)
    return Stored(entry, row.study_id, row.source_kind, fingerprint)


def check_same_instance(existing: Stored, parsed: ParsedFile, store: BlobStore) -> None:
    """A re-send must be the instance already stored: same identity, same pixels (see fingerprint)."""
    stored, meta = existing.fingerprint, parsed.meta
    if stored is None or stored.identity_sha256 is None or stored.content_sha256 is None:
        return  # stored before fingerprints were kept: nothing to compare against
    if stored.identity_sha256 != meta.identity_sha256:
        raise InstanceConflict(
            "(0008,0018) SOP Instance UID is already stored with other patient or study attributes; "
            "nothing was changed (correct it at the source and send it with a new SOP Instance UID)"
        )
    if stored.content_sha256 == meta.content_sha256:
        return
    recoded = meta.source_kind == "dicom" and stored.transfer_syntax_uid != meta.transfer_syntax_uid
    if recoded and same_decoded_pixels(_stored_bytes(store, stored.blob_key), read_dicom(parsed.data)):
        return  # the same pixels in another transfer syntax
    raise InstanceConflict(
        "(0008,0018) SOP Instance UID is already stored with other pixel data; nothing was changed "
        "(send the new image with a new SOP Instance UID)"
    )


def _stored_bytes(store: BlobStore, key: str) -> bytes:
    """The stored file, or nothing when it is gone (then nothing can prove the pixels equal)."""
    try:
        return store.get(key)
    except FileNotFoundError:
        logger.error("stored file of a re-sent instance is missing")
        return b""


def _drop_unused_blob(db: Session, store: BlobStore, key: str) -> None:
    """After a lost race, remove the file this request created, unless the winner stored it too."""
    stamp = forget_new_blob(db, key)
    if stamp is not None:
        store.discard(key, stamp)


def _insert_rows(
    db: Session, meta: InstanceMeta, key: str, size: int, priority: int | None, rows: _RowCache
) -> tuple[Instance, AnalysisJob | None]:
    """The rows of one new instance; a job only when the model may score it."""
    study = _upsert_study(db, meta, priority, rows)
    series = _upsert_series(db, study, meta, rows)
    series.last_instance_at, series.completed_at = utcnow(), None  # a late instance re-opens the series
    instance = Instance(
        id=uuid.uuid4(),
        series_id=series.id,
        study_id=study.id,
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        instance_number=meta.instance_number,
        source_kind=meta.source_kind,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        blob_key=key,
        blob_size=size,
        rows=meta.rows,
        columns=meta.columns,
        frame_count=meta.frame_count,
        not_applicable_reason=meta.not_applicable_reason,
        identity_sha256=meta.identity_sha256,
        content_sha256=meta.content_sha256,
    )
    db.add(instance)
    job = None
    if meta.not_applicable_reason is None:
        job = AnalysisJob(id=uuid.uuid4(), instance_id=instance.id, status=JobStatus.queued, enqueued_at=utcnow())
        db.add(job)
    db.flush()
    return instance, job


def _upsert_study(db: Session, meta: InstanceMeta, priority: int | None, rows: _RowCache) -> Study:
    """The study row; a later instance fills attributes the first one lacked, never overwrites."""
    study = rows.studies.get(meta.study_instance_uid)
    if study is None:
        study = db.scalar(select(Study).where(Study.study_instance_uid == meta.study_instance_uid))
    values = _study_values(meta)
    if study is None:
        study = Study(
            id=uuid.uuid4(),
            study_instance_uid=meta.study_instance_uid,
            synthetic=meta.synthetic,
            clinical_priority=priority or 0,
            **values,
        )
        db.add(study)
        db.flush()
        rows.studies[meta.study_instance_uid] = rows.created[study.id] = study
        return study
    if study.patient_id and meta.patient_id and study.patient_id != meta.patient_id:
        raise StudyPatientMismatch(
            "(0020,000D) Study Instance UID is already stored for a different (0010,0020) Patient ID; "
            "refusing to merge two patients' images"
        )
    _fill_missing(study, values)
    _raise_priority(study, priority)
    rows.studies[meta.study_instance_uid] = study
    return study


def _upsert_series(db: Session, study: Study, meta: InstanceMeta, rows: _RowCache) -> Series:
    series = rows.series.get(meta.series_instance_uid)
    if series is None:
        series = db.scalar(select(Series).where(Series.series_instance_uid == meta.series_instance_uid))
    values = {
        "series_number": meta.series_number,
        "modality": meta.modality,
        "body_part": meta.body_part,
        "description": meta.series_description,
    }
    if series is None:
        series = Series(id=uuid.uuid4(), study_id=study.id, series_instance_uid=meta.series_instance_uid, **values)
        db.add(series)
        db.flush()
        rows.series[meta.series_instance_uid] = series
        return series
    if series.study_id != study.id:
        raise Conflict("(0020,000E) Series Instance UID already belongs to another study")
    _fill_missing(series, values)
    rows.series[meta.series_instance_uid] = series
    return series


def _fill_missing(row: Study | Series, values: Mapping[str, object]) -> None:
    for name, value in values.items():
        if value is not None and getattr(row, name) is None:
            setattr(row, name, value)
