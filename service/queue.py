"""Send tasks to the workers by name, only after the row that describes them is committed.

The gateway never imports ``worker/``: this minimal Celery app only publishes messages.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
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
PUBLISH_DRAIN_SECONDS = 10.0  # at exit, how long the publisher thread may take to send what is queued

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


def enqueue_after_commit(
    db: Session, job_ids: list[uuid.UUID], settings: Settings | None = None, *, background: bool = False
) -> None:
    """Publish once the jobs are committed. A failed publish is repaired by the reconciler.

    ``background``: hand the messages to this process's publisher thread instead of sending
    them before returning, so that a C-STORE or STOW-RS answer does not wait for the broker
    (the job rows are committed: if the process dies before they are sent, the reconciler
    sends them, as for any lost message).
    """
    if not job_ids:
        return
    settings = settings or get_settings()

    def _send(_: Session) -> None:
        if background:
            _background_publisher(os.getpid()).put(settings, job_ids)
        else:
            _send_all(settings, job_ids)

    event.listen(db, "after_commit", _send, once=True)


def _send_all(settings: Settings, job_ids: list[uuid.UUID]) -> None:
    """Publish the jobs of one commit in order; after the first failure stop trying.

    A broker that just refused (or timed out on) one message will refuse the next ones too:
    trying each would cost one connection timeout per file (a 50-file upload during a Redis
    outage took 32 s). The rows are committed as queued, so the reconciler sends the rest.
    """
    for sent, job_id in enumerate(job_ids):
        try:
            send_analysis(job_id, settings)
        except (OperationalError, DBAPIError, OSError):  # kombu, the SQL broker, sockets
            logger.warning(
                "broker unreachable; %d job(s) left for the reconciler",
                len(job_ids) - sent,
                extra={"job_id": str(job_id)},
            )
            return


class _Publisher:
    """A daemon thread that publishes committed jobs in the order they were handed over."""

    def __init__(self) -> None:
        self._pending: queue.SimpleQueue[tuple[Settings, list[uuid.UUID]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sightline-publisher", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, settings: Settings, job_ids: list[uuid.UUID]) -> None:
        self._pending.put((settings, job_ids))

    def close(self, timeout_s: float = PUBLISH_DRAIN_SECONDS) -> None:
        """Send what is queued (up to ``timeout_s``), then stop; what is left the reconciler sends."""
        self._pending.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._pending.get()) is not None:
            try:
                _send_all(*item)
            except Exception:  # never let the thread die: the reconciler repairs what was not sent
                logger.exception("publishing jobs failed; left for the reconciler")


@lru_cache(maxsize=1)
def _background_publisher(_pid: int) -> _Publisher:
    """One publisher per process (keyed by pid: a forked child must not share the parent's thread)."""
    return _Publisher()
