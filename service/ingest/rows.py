"""The study, series, instance and job rows of stored files, written in the lock order of
``service.ingest.service`` (studies locked up front in UID order, then series, then
instances and jobs)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.tables import AnalysisJob, Instance, JobStatus, Series, Study, utcnow
from service.errors import Conflict
from service.ingest.dicom_meta import InstanceMeta
from service.ingest.errors import StudyPatientMismatch
from service.ingest.reading import ParsedFile
from service.registry.routing import RoutedAttributes, matches
from service.registry.service import RoutedModel


class RowCache:
    """Study and series rows already read or created in this batch, by UID (one SELECT each).

    The studies the batch locked up front (``lock_studies``) and the ones it created stay
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


@dataclass(frozen=True)
class LockedStudies:
    """The request's study rows, locked FOR UPDATE; ``created``: the ids this transaction inserted."""

    studies: list[Study]
    created: frozenset[uuid.UUID]


def lock_studies(db: Session, files: Sequence[ParsedFile], priority: int | None) -> LockedStudies:
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
        # RETURNING, not rowcount: psycopg reports -1 for this INSERT ... ON CONFLICT DO NOTHING.
        inserted = db.scalar(
            insert(Study)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
            .returning(Study.id)
        )
        study = db.scalars(
            select(Study)
            .where(Study.study_instance_uid == uid)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        if inserted == new_id and study.id == new_id:
            created.add(new_id)
        studies.append(study)
    return LockedStudies(studies, frozenset(created))


def drop_empty_studies(db: Session, locked: LockedStudies, used: set[uuid.UUID]) -> None:
    """Delete the study rows this transaction created for files that were all refused (``used``:
    the ids of the studies that got or already had an instance)."""
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


def raise_priority(study: Study, priority: int | None) -> None:
    """The request's priority applies to every study it touched, duplicates included; never lowers."""
    if priority is not None and priority > study.clinical_priority:
        study.clinical_priority = priority


def insert_rows(
    db: Session,
    meta: InstanceMeta,
    key: str,
    size: int,
    priority: int | None,
    rows: RowCache,
    routed: Sequence[RoutedModel],
) -> tuple[Instance, list[AnalysisJob]]:
    """The rows of one new instance; when the active model's scope admits it, one job per
    routed model (active first, then shadows) whose routing rules match its attributes."""
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
    jobs = [] if meta.not_applicable_reason is not None else _jobs(instance.id, meta, routed)
    db.add_all(jobs)
    db.flush()
    return instance, jobs


def _jobs(instance_id: uuid.UUID, meta: InstanceMeta, routed: Sequence[RoutedModel]) -> list[AnalysisJob]:
    attributes = RoutedAttributes(meta.modality, meta.body_part, meta.series_description, meta.sop_class_uid)
    now = utcnow()
    return [
        AnalysisJob(
            id=uuid.uuid4(),
            instance_id=instance_id,
            model_name=model.key.name,
            model_version=model.key.version,
            status=JobStatus.queued,
            created_at=now,
            enqueued_at=now,
        )
        for model in routed
        if matches(model.rules, attributes)
    ]


def _upsert_study(db: Session, meta: InstanceMeta, priority: int | None, rows: RowCache) -> Study:
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
    raise_priority(study, priority)
    rows.studies[meta.study_instance_uid] = study
    return study


def _upsert_series(db: Session, study: Study, meta: InstanceMeta, rows: RowCache) -> Series:
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
