"""Series completeness and scores, kept in the database so every replica sees one truth.

Instances of a series arrive one by one, over any number of API replicas and DICOM
associations. A series is complete once ``series_quiet_seconds`` passed since its last
instance arrived and none of its jobs is queued or running; only then is its score
computed from the stored per-slice scores (``models.aggregation``). A late instance
re-opens the series (``completed_at`` back to NULL, ingest does it); when it completes
again the score is recomputed from every slice row, and the slices done before are not
run again. Every change happens under the study row lock (``lock_study``), the same lock
ingest takes first, so completion and a concurrent upload cannot interleave.

Scores and completeness are per model (``ModelKey``): the slices read and the pending jobs
that hold a series open are one model's, the active one for reader triage, so a shadow
model's slices never reach a reader and its queued jobs never delay the worklist.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from models.aggregation import adjacent_window_score
from service.active_model import ModelKey
from service.db.session import begin_write
from service.db.tables import AnalysisJob, Instance, JobStatus, Series, SliceScore, Study

PENDING = (JobStatus.queued, JobStatus.running)


@dataclass(frozen=True)
class OrderedSlice:
    """One scored frame in anatomical order, as the score curve serves it."""

    instance_id: uuid.UUID
    sop_instance_uid: str
    instance_number: int | None
    frame_index: int
    position: float | None
    tumour_score: float
    label: str
    probabilities: dict[str, float]


def of_model(owner: type[SliceScore] | type[AnalysisJob], model: ModelKey) -> ColumnElement[bool]:
    """Rows of ``model`` in a table with ``model_name``/``model_version`` columns."""
    return (owner.model_name == model.name) & (owner.model_version == model.version)


def ordered_slices(db: Session, series_id: uuid.UUID, model: ModelKey) -> list[OrderedSlice]:
    """``model``'s scored frames of the series, sorted by position along the slice normal when
    every frame has one (PS3.3 C.7.6.2.1.1), else by Instance Number then frame index."""
    rows = db.execute(
        select(SliceScore, Instance.sop_instance_uid, Instance.instance_number)
        .join(Instance, Instance.id == SliceScore.instance_id)
        .where(SliceScore.series_id == series_id, of_model(SliceScore, model))
    ).all()
    slices = [
        OrderedSlice(s.instance_id, sop, number, s.frame_index, s.position, s.tumour_score, s.label, s.probabilities)
        for s, sop, number in rows
    ]
    by_number = sorted(slices, key=lambda s: (s.instance_number or 0, s.frame_index, s.sop_instance_uid))
    if by_number and all(s.position is not None for s in by_number):
        return sorted(by_number, key=lambda s: s.position or 0.0)  # stable: equal positions keep number order
    return by_number


def score_series(db: Session, series: Series, window: int, model: ModelKey) -> None:
    """Series score, key instance/frame and label from ``model``'s slice rows (none: all NULL)."""
    slices = ordered_slices(db, series.id, model)
    best = adjacent_window_score([s.tumour_score for s in slices], window)
    series.scored_slices = len(slices)
    if best is None:
        series.series_score = series.key_instance_id = series.key_frame = series.predicted_label = None
        return
    key = slices[best.key_index]
    series.series_score = best.score
    series.key_instance_id, series.key_frame, series.predicted_label = key.instance_id, key.frame_index, key.label


def lock_study(db: Session, study_id: uuid.UUID) -> Study:
    """The study row, locked until the caller's transaction ends and read afresh.

    SQLite has no row locks: there the whole database's write lock is taken first
    (``begin_write``), or two workers could both read "results due" and both publish.
    """
    begin_write(db)
    study = db.get(Study, study_id, with_for_update=True, populate_existing=True)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    return study


def complete_quiet_series(
    db: Session, study_id: uuid.UUID, *, model: ModelKey, quiet_seconds: float, window: int, now: datetime
) -> int:
    """Complete and score every open series of the study that is quiet and has no pending job of ``model``.

    The caller holds the study lock (``lock_study``) and recomputes the study afterwards.
    Returns how many series were completed.
    """
    ready = db.scalars(select(Series).where(Series.study_id == study_id, *_completable(model, quiet_seconds, now)))
    ready_series = ready.all()
    for series in ready_series:
        score_series(db, series, window, model)
        series.completed_at = now
    db.flush()
    return len(ready_series)


def studies_with_quiet_series(
    db: Session, *, model: ModelKey, quiet_seconds: float, now: datetime, limit: int
) -> list[uuid.UUID]:
    """Studies holding a series that can complete now for ``model`` (the sweep's work list)."""
    return list(
        db.scalars(
            select(Series.study_id)
            .where(*_completable(model, quiet_seconds, now))
            .group_by(Series.study_id)
            .order_by(Series.study_id)
            .limit(limit)
        )
    )


def _completable(model: ModelKey, quiet_seconds: float, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Open, quiet for ``quiet_seconds``, and none of ``model``'s jobs queued or running."""
    pending_job = exists().where(
        AnalysisJob.instance_id == Instance.id,
        Instance.series_id == Series.id,
        AnalysisJob.status.in_(PENDING),
        of_model(AnalysisJob, model),
    )
    cutoff = now - timedelta(seconds=quiet_seconds)
    return (Series.completed_at.is_(None), Series.last_instance_at <= cutoff, ~pending_job)
