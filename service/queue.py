"""Send tasks to the workers by name, only after the row that describes them is committed.

The gateway never imports ``worker/``: this minimal Celery app only publishes messages.
"""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.settings import Settings, get_settings

ANALYSE_TASK = "sightline.analyse_instance"
RECONCILE_TASK = "sightline.reconcile"
SWEEP_SERIES_TASK = "sightline.sweep_series"
ANALYSIS_QUEUE = "analysis"

logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def publisher(broker_url: str) -> Celery:
    app = Celery("sightline-publisher", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_transport_options = {"max_retries": 3}
    return app


def send_analysis(job_id: uuid.UUID, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    publisher(settings.broker_url).send_task(ANALYSE_TASK, args=[str(job_id)], queue=ANALYSIS_QUEUE)


def enqueue_after_commit(db: Session, job_ids: list[uuid.UUID], settings: Settings | None = None) -> None:
    """Publish once the jobs are committed. A failed publish is repaired by the reconciler."""
    if not job_ids:
        return

    def _send(_: Session) -> None:
        for job_id in job_ids:
            try:
                send_analysis(job_id, settings)
            except (OperationalError, DBAPIError, OSError):  # kombu, the SQL broker, sockets
                logger.warning("broker unreachable; job left for the reconciler", extra={"job_id": str(job_id)})

    event.listen(db, "after_commit", _send, once=True)
