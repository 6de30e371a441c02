"""The study's triage state, recomputed from its instances' jobs and results.

Called by ingest (a new instance makes the study pending again) and by the worker (a
result or a permanent failure). It only flushes; the caller's unit of work commits.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import AnalysisJob, AnalysisResult, Instance, JobStatus, Study, StudyStatus


def recompute_study(db: Session, study_id: uuid.UUID) -> Study:
    """Triage score = highest tumour score among the study's instances; key instance = its owner."""
    study = db.get(Study, study_id, with_for_update=True)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    statuses = set(
        db.scalars(
            select(AnalysisJob.status)
            .join(Instance, AnalysisJob.instance_id == Instance.id)
            .where(Instance.study_id == study_id)
        )
    )
    best = db.execute(
        select(AnalysisResult.tumour_score, AnalysisResult.label, AnalysisResult.instance_id)
        .join(Instance, AnalysisResult.instance_id == Instance.id)
        .where(Instance.study_id == study_id)
        .order_by(AnalysisResult.tumour_score.desc(), AnalysisResult.created_at.asc())
        .limit(1)
    ).first()
    study.triage_score = best.tumour_score if best else None
    study.predicted_label = best.label if best else None
    study.key_instance_id = best.instance_id if best else None
    study.status = _study_status(statuses)
    db.flush()
    return study


def _study_status(statuses: set[JobStatus]) -> StudyStatus:
    if statuses & {JobStatus.queued, JobStatus.running}:
        return StudyStatus.pending
    if JobStatus.failed in statuses:
        return StudyStatus.failed
    return StudyStatus.analysed
