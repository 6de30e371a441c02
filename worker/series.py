"""Completing quiet series: after every job, and on a beat sweep for series whose last job
finished before their quiet period ran out (see ``service.db.series_state``). The same
sweep publishes the results of studies that settled (``service.results.publish``) and
pushes them to the configured destinations (``service.results.deliver``).

Series are scored from the active model's slices only, and only its pending jobs hold a
series open (``service.registry.scoring``): shadow results never reach triage."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.orm import Session

from service.active_model import active_model, manifest_of
from service.db.series_state import complete_quiet_series, lock_study, studies_with_quiet_series
from service.db.session import unit_of_work
from service.db.tables import Study, StudyStatus, utcnow
from service.db.triage import recompute_locked
from service.results.deliver import deliver_due
from service.results.publish import mark_due, publish_due
from service.settings import Settings

logger = logging.getLogger(__name__)

SWEEP_BATCH = 200


def settle_study(db: Session, study_id: uuid.UUID, settings: Settings) -> Study:
    """Under the study lock: complete the study's quiet series, then recompute its triage."""
    study = lock_study(db, study_id)
    model = active_model(db, settings)
    completed = complete_quiet_series(
        db,
        study_id,
        model=model,
        quiet_seconds=settings.series_quiet_seconds,
        window=manifest_of(model, settings).aggregation.window,
        now=utcnow(),
    )
    if completed:
        logger.info("series completed", extra={"study_id": str(study_id), "series": completed})
    was_analysed = study.status == StudyStatus.analysed
    study = recompute_locked(db, study, model)
    if completed or not was_analysed:  # a shadow job that ends last also settles the study as analysed
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
            db,
            model=active_model(db, settings),
            quiet_seconds=settings.series_quiet_seconds,
            now=utcnow(),
            limit=SWEEP_BATCH,
        )
    for study_id in study_ids:
        with unit_of_work(settings) as db:
            settle_study(db, study_id, settings)
    publish_due(settings)
    deliver_due(settings)
    return len(study_ids)
