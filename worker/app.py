"""The Celery app of the analysis workers.

The database, not the broker, is the truth about a job (DESIGN.md, "The flow"): no result
backend, messages acknowledged late, and a reconciler on the beat schedule re-sends jobs
whose message was lost or whose worker died.

Maintenance (the reconciler, the series sweep) runs inside the ``sightline beat`` process
(``worker.beat.LocalScheduler``), not as messages on a queue. Sent to ``analysis`` it waited
behind the backlog and expired: under load 11 of 12 reconcile runs were dropped, so a
killed worker's job waited for the queue to drain. A separate queue consumed by every
worker would still need a free worker slot (each worker holds one unacked analysis message
with acks_late and prefetch 1, for the whole job) and would not run at all while every worker
is busy on long jobs, crashed, or scaled away. The beat needs only the database, the broker
and the blob store; it is one replica, and the reconciler is safe to run concurrently anyway
(rows are locked with SKIP LOCKED). Nothing is sent, so nothing can expire.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from service.logging_setup import configure_logging
from service.queue import ANALYSIS_QUEUE, RECONCILE_EXPLANATIONS_TASK, RECONCILE_TASK, SWEEP_SERIES_TASK
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Redis re-delivers an unacknowledged message after this many seconds; it must exceed the
# job deadline so a slow but alive worker is not doubled by the broker before the
# reconciler would have judged it stuck.
MIN_VISIBILITY_TIMEOUT_S = 3600


def transport_options(settings: Settings) -> dict[str, float]:
    """Redis redelivers an unacknowledged message after ``visibility_timeout``; keep it past
    any job's deadline. The SQLAlchemy transport (embedded default) hands every option to
    ``create_engine``, which refuses unknown ones, so it gets none (it polls every second)."""
    if settings.broker_url.startswith("sqla+"):
        return {}
    return {"visibility_timeout": max(MIN_VISIBILITY_TIMEOUT_S, 2 * settings.job_deadline_seconds)}


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for at-least-once delivery of analysis jobs."""
    app = Celery("sightline", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=ANALYSIS_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        worker_hijack_root_logger=False,
        # Run in the beat process by LocalScheduler (see the module docstring), so no queue and no
        # expiry: a backlog cannot delay or discard them.
        beat_scheduler="worker.beat:LocalScheduler",
        beat_schedule={
            "reconcile-jobs": {"task": RECONCILE_TASK, "schedule": settings.reconcile_interval_seconds},
            "sweep-series": {"task": SWEEP_SERIES_TASK, "schedule": settings.series_sweep_seconds},
            "reconcile-explanations": {
                "task": RECONCILE_EXPLANATIONS_TASK,
                "schedule": settings.reconcile_interval_seconds,
            },
        },
    )
    return app


celery_app = make_celery(get_settings())


@signals.setup_logging.connect  # type: ignore[untyped-decorator]
def _configure_json_logging(**_: Any) -> None:
    """Replace Celery's own logging set-up with Sightline's JSON logs."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _serve_worker_metrics(**_: Any) -> None:
    """The worker's main process serves the job metrics of all its pool children (``worker.metrics``)."""
    from worker.metrics import serve_worker_metrics

    serve_worker_metrics(get_settings().worker_metrics_port)


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _forget_child_gauges(pid: int | None = None, **_: Any) -> None:
    from worker.metrics import mark_child_dead

    mark_child_dead(pid or os.getpid())


@signals.beat_init.connect  # type: ignore[untyped-decorator]
def _serve_beat_metrics(**_: Any) -> None:
    """The beat serves the maintenance runs and the queue depth, once per deployment."""
    from worker.metrics import serve_beat_metrics

    settings = get_settings()
    serve_beat_metrics(settings.beat_metrics_port, settings)


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _load_classifier(**_: Any) -> None:
    """Load the model once per pool process (prefork children and the solo pool alike).

    A broken model stops the process here, loudly, instead of failing every job.
    """
    from worker.classifier import worker_classifier

    classifier = worker_classifier(get_settings())
    logger.info(
        "classifier loaded",
        extra={
            "model": classifier.manifest.name,
            "model_version": classifier.manifest.version,
            "model_sha256": classifier.model_sha256,
        },
    )
