"""Completing quiet series: after every job, and on a beat sweep for series whose last job
finished before their quiet period ran out (see ``service.db.series_state``). The same
sweep publishes the results of studies that settled (``service.results.publish``) and
pushes them to the configured destinations (``service.results.deliver``)."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.orm import Session

from service.active_model import active_manifest
from service.db.series_state import complete_quiet_series, lock_study, studies_with_quiet_series
from service.db.session import unit_of_work
from service.db.tables import Study, utcnow
from service.db.triage import recompute_locked
from service.results.deliver import deliver_due
from service.results.publish import mark_due, publish_due
from service.settings import Settings

logger = logging.getLogger(__name__)

SWEEP_BATCH = 200


def settle_study(db: Session, study_id: uuid.UUID, settings: Settings) -> Study:
    """Under the study lock: complete the study's quiet series, then recompute its triage."""
    study = lock_study(db, study_id)
    completed = complete_quiet_series(
        db,
        study_id,
        quiet_seconds=settings.series_quiet_seconds,
        window=active_manifest(settings).aggregation.window,
        now=utcnow(),
    )
    if completed:
        logger.info("series completed", extra={"study_id": str(study_id), "series": completed})
    study = recompute_locked(db, study)
    if completed:
        mark_due(study, utcnow())
    return study


def sweep_after_job(settings: Settings) -> None:
    """Every finished job also sweeps, so a series that went quiet is completed (and its results
    published) as soon as a worker is free, not only on beat's schedule (``worker.beat`` runs
    the sweep in the beat process). The cost when nothing is ready is three indexed queries."""
    try:
        sweep_quiet_series(settings)
    except DatabaseError:
        logger.warning("series sweep after a job failed; beat's sweep will complete them")


def sweep_quiet_series(settings: Settings) -> int:
    """Settle every study with a quiet open series, one short transaction each; returns how many."""
    with unit_of_work(settings) as db:
        study_ids = studies_with_quiet_series(
            db, quiet_seconds=settings.series_quiet_seconds, now=utcnow(), limit=SWEEP_BATCH
        )
    for study_id in study_ids:
        with unit_of_work(settings) as db:
            settle_study(db, study_id, settings)
    publish_due(settings)
    deliver_due(settings)
    return len(study_ids)
