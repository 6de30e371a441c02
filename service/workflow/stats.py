"""Admin statistics: reader agreement with the model, the job queue, processing time, failures.

Percentiles are computed in Python (linear interpolation, as ``percentile_cont``) over at
most the newest ``PROCESSING_SAMPLE`` jobs finished in the last 24 hours, so the same code
answers on SQLite and PostgreSQL. Failures list error codes and times only, no patient data.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.tables import AnalysisJob, Feedback, JobStatus, as_utc, utcnow
from service.workflow.schemas import (
    Agreement,
    FailureStats,
    FeedbackStats,
    ProcessingSeconds,
    RecentFailure,
    Stats,
)

PROCESSING_WINDOW = timedelta(hours=24)
PROCESSING_SAMPLE = 10_000
RECENT_FAILURES = 20


def stats(db: Session, labels: list[str]) -> Stats:
    return Stats(
        feedback=feedback_stats(db, labels),
        queue=queue_counts(db),
        processing_seconds=processing_seconds(db),
        failures=failures(db),
    )


def feedback_stats(db: Session, labels: list[str]) -> FeedbackStats:
    """Confusion of model label x reader label, and per model label how often readers agreed."""
    rows = db.execute(
        select(Feedback.model_label, Feedback.reader_label, Feedback.agrees, func.count())
        .where(Feedback.model_label.is_not(None))
        .group_by(Feedback.model_label, Feedback.reader_label, Feedback.agrees)
    ).all()
    confusion: dict[str, dict[str, int]] = {}
    agreed: dict[str, int] = {}
    total: dict[str, int] = {}
    for label, given, agrees, count in rows:
        model_label = str(label)
        cells = confusion.setdefault(model_label, {})
        cells[given] = cells.get(given, 0) + count
        total[model_label] = total.get(model_label, 0) + count
        agreed[model_label] = agreed.get(model_label, 0) + (count if agrees else 0)
    agreement = {
        label: Agreement(
            agreed=agreed.get(label, 0),
            total=total.get(label, 0),
            rate=agreed.get(label, 0) / total[label] if total.get(label) else None,
        )
        for label in dict.fromkeys([*labels, *total])
    }
    return FeedbackStats(labels=labels, confusion=confusion, agreement=agreement)


def queue_counts(db: Session) -> dict[str, int]:
    rows = db.execute(select(AnalysisJob.status, func.count()).group_by(AnalysisJob.status)).all()
    counts = {status: count for status, count in rows}
    return {status.value: counts.get(status, 0) for status in JobStatus}


def processing_seconds(db: Session) -> ProcessingSeconds:
    since = utcnow() - PROCESSING_WINDOW
    rows = db.execute(
        select(AnalysisJob.started_at, AnalysisJob.finished_at)
        .where(AnalysisJob.finished_at >= since, AnalysisJob.started_at.is_not(None))
        .order_by(AnalysisJob.finished_at.desc())
        .limit(PROCESSING_SAMPLE)
    ).all()
    seconds = sorted(max(0.0, (as_utc(end) - as_utc(start)).total_seconds()) for start, end in rows if start and end)
    return ProcessingSeconds(count=len(seconds), p50=percentile(seconds, 0.5), p95=percentile(seconds, 0.95))


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's ``percentile_cont``)."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def failures(db: Session) -> FailureStats:
    failed = AnalysisJob.status == JobStatus.failed
    by_code = {
        code or "unknown": count
        for code, count in db.execute(
            select(AnalysisJob.error_code, func.count()).where(failed).group_by(AnalysisJob.error_code)
        ).all()
    }
    recent = db.execute(
        select(AnalysisJob.error_code, AnalysisJob.finished_at)
        .where(failed)
        .order_by(AnalysisJob.finished_at.desc().nulls_last(), AnalysisJob.id)
        .limit(RECENT_FAILURES)
    ).all()
    return FailureStats(
        total=sum(by_code.values()),
        by_code=by_code,
        recent=[RecentFailure(error_code=code, finished_at=as_utc(at) if at else None) for code, at in recent],
    )
