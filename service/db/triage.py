"""The study's triage state, recomputed from its series, jobs and applicability.

Called by ingest (a new instance makes the study pending again), by the worker (a result
or a permanent failure) and by the series sweep. It only flushes; the caller's unit of
work commits. Rules, in order:

- nothing in the study is applicable (all instances outside the model's scope, or
  without pixels): ``not_applicable``, no score, no label;
- a job of the active model is queued or running, or an applicable series is not complete
  yet: ``pending`` (a shadow model's jobs never hold a study back: readers see only the
  active model, ``service.active_model``);
- at least one applicable series has a score: ``analysed``;
- otherwise (every applicable instance failed): ``failed``.

The study score is the highest series score (``service.db.series_state``), its key
series, key instance and key frame come with it. A re-opened series keeps its last score
until it completes again, so a study does not drop down the worklist while a late slice
is analysed; its status says ``pending`` meanwhile.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.active_model import ModelKey, active_model
from service.db.series_state import PENDING, lock_study
from service.db.tables import AnalysisJob, Instance, JobStatus, Series, Study, StudyStatus
from service.settings import get_settings


def recompute_study(db: Session, study_id: uuid.UUID) -> Study:
    """Lock the study row, then ``recompute_locked``."""
    return recompute_locked(db, lock_study(db, study_id))


def recompute_locked(db: Session, study: Study, model: ModelKey | None = None) -> Study:
    """Status, score and key slice of a study whose row the caller locked (see the module rules);
    ``model`` is the model readers see (default: the active one)."""
    study_id = study.id
    db.flush()
    model = model or active_model(db, get_settings())
    applicable_series = set(
        db.scalars(
            select(Instance.series_id)
            .distinct()
            .where(Instance.study_id == study_id, Instance.not_applicable_reason.is_(None))
        )
    )
    statuses = set(
        db.scalars(
            select(AnalysisJob.status)
            .distinct()
            .join(Instance, AnalysisJob.instance_id == Instance.id)
            .where(
                Instance.study_id == study_id,
                AnalysisJob.model_name == model.name,
                AnalysisJob.model_version == model.version,
            )
        )
    )
    series = [s for s in db.scalars(select(Series).where(Series.study_id == study_id)) if s.id in applicable_series]
    scored = [s for s in series if s.series_score is not None]
    study.status = _status(series, scored, statuses)
    best = max(scored, key=lambda s: (s.series_score or 0.0, -(s.series_number or 0)), default=None)
    study.triage_score = best.series_score if best else None
    study.predicted_label = best.predicted_label if best else None
    study.key_series_id = best.id if best else None
    study.key_instance_id = best.key_instance_id if best else None
    study.key_frame = best.key_frame if best else None
    db.flush()
    return study


def _status(series: list[Series], scored: list[Series], statuses: set[JobStatus]) -> StudyStatus:
    if not series:
        return StudyStatus.not_applicable
    if statuses & set(PENDING) or any(s.completed_at is None for s in series):
        return StudyStatus.pending
    if scored:
        return StudyStatus.analysed
    return StudyStatus.failed
