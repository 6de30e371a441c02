"""Celery tasks: thin glue from a broker message to the pipeline. Names are the contract
with the gateway, which sends them by name (``service.queue``)."""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any

from celery import Task

from service.queue import ANALYSE_TASK, EXPLAIN_TASK, RECONCILE_TASK, SWEEP_SERIES_TASK
from service.settings import get_settings
from worker.app import celery_app
from worker.classifier import worker_classifier
from worker.explain import explain_job
from worker.pipeline import TRANSIENT_ERRORS, analyse_job
from worker.reconcile import reconcile_jobs
from worker.series import sweep_after_job, sweep_quiet_series

logger = logging.getLogger(__name__)

# Exponential backoff with full jitter, capped well below the broker's visibility timeout.
RETRY_BACKOFF_S = 2
RETRY_BACKOFF_MAX_S = 300
ROW_TASK_OPTIONS: dict[str, Any] = {  # a task whose message names a row (job, explanation) that it owns
    "bind": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": RETRY_BACKOFF_S,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": get_settings().job_max_attempts,
}


def _row_id(text: str, what: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        logger.error("malformed %s id in message; dropped", what)
        return None


@celery_app.task(name=ANALYSE_TASK, **ROW_TASK_OPTIONS)  # type: ignore[untyped-decorator]
def analyse_instance(self: Task[Any, Any], job_id: str) -> str:
    """Analyse the instance of one job; the job row says whether there is anything to do."""
    parsed = _row_id(job_id, "job")
    if parsed is None:
        return "skipped"
    settings = get_settings()
    classifier = worker_classifier(settings)
    worker_name = self.request.hostname or socket.gethostname()
    outcome = analyse_job(parsed, settings=settings, classifier=classifier, worker_name=worker_name)
    sweep_after_job(settings)
    return outcome.value


@celery_app.task(name=RECONCILE_TASK)  # type: ignore[untyped-decorator]
def reconcile() -> dict[str, int]:
    """Re-send or fail jobs stuck past the deadline. Beat runs ``reconcile_jobs`` in-process
    (``worker.beat``); the task stays for a manual run and for messages sent by older beats."""
    return reconcile_jobs(get_settings()).as_dict()


@celery_app.task(name=SWEEP_SERIES_TASK)  # type: ignore[untyped-decorator]
def sweep_series() -> int:
    """Complete and score series that went quiet after their last job finished; beat runs the
    same function in-process (``worker.beat``), the task is for a manual run and older beats."""
    return sweep_quiet_series(get_settings())


@celery_app.task(name=EXPLAIN_TASK, **ROW_TASK_OPTIONS)  # type: ignore[untyped-decorator]
def explain(self: Task[Any, Any], explanation_id: str) -> str:
    """Compute one on-demand explanation (``worker.explain``); its row says whether there is anything to do."""
    parsed = _row_id(explanation_id, "explanation")
    if parsed is None:
        return "skipped"
    settings = get_settings()
    worker_name = self.request.hostname or socket.gethostname()
    return explain_job(parsed, settings=settings, classifier=worker_classifier(settings), worker_name=worker_name).value
