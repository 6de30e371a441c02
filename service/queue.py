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
from collections.abc import Mapping
from functools import lru_cache

from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.active_model import ModelKey, configured_model
from service.settings import Settings, get_settings

ANALYSE_TASK = "sightline.analyse_instance"
RECONCILE_TASK = "sightline.reconcile"
SWEEP_SERIES_TASK = "sightline.sweep_series"
RECONCILE_EXPLANATIONS_TASK = "sightline.reconcile_explanations"
EXPLAIN_TASK = "sightline.explain"  # one on-demand explanation row (service.explanations, worker.explain)
ANALYSIS_QUEUE = "analysis"
PUBLISH_DRAIN_SECONDS = 10.0  # at exit, how long the publisher thread may take to send what is queued

logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def publisher(broker_url: str) -> Celery:
    app = Celery("sightline-publisher", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_transport_options = {"max_retries": 3}
    return app


def analysis_queue(model: ModelKey, settings: Settings) -> str:
    """The queue of ``model``'s jobs, consumed only by workers running that model.

    The configured model (``SIGHTLINE_MODEL_NAME``) keeps ``analysis``, so existing deploy
    files and workers keep working; any other version gets ``analysis.NAME@VERSION``. The
    queue follows the model, not its role: promoting a version needs no worker restart.
    """
    return ANALYSIS_QUEUE if model == configured_model(settings) else f"{ANALYSIS_QUEUE}.{model}"


def send_analysis(job_id: uuid.UUID, settings: Settings | None = None, *, queue: str = ANALYSIS_QUEUE) -> None:
    settings = settings or get_settings()
    publisher(settings.broker_url).send_task(ANALYSE_TASK, args=[str(job_id)], queue=queue)


def send_explanations_after_commit(db: Session, queues: Mapping[uuid.UUID, str], settings: Settings) -> None:
    """Publish ``sightline.explain`` for each row (id -> its model's ``analysis_queue``) once it
    is committed; a failed publish leaves the rows queued for ``worker.explain.reconcile_explanations``."""

    def _send(_: Session) -> None:
        for explanation_id, queue_name in queues.items():
            try:
                publisher(settings.broker_url).send_task(EXPLAIN_TASK, args=[str(explanation_id)], queue=queue_name)
            except (OperationalError, DBAPIError, OSError):
                logger.warning(
                    "broker unreachable; explanation left for the reconciler",
                    extra={"explanation_id": str(explanation_id)},
                )
                return

    if queues:
        event.listen(db, "after_commit", _send, once=True)


def enqueue_after_commit(
    db: Session,
    job_ids: list[uuid.UUID],
    settings: Settings | None = None,
    *,
    background: bool = False,
    queues: Mapping[uuid.UUID, str] | None = None,
) -> None:
    """Publish once the jobs are committed. A failed publish is repaired by the reconciler.

    ``background``: hand the messages to this process's publisher thread instead of sending
    them before returning, so that a C-STORE or STOW-RS answer does not wait for the broker
    (the job rows are committed: if the process dies before they are sent, the reconciler
    sends them, as for any lost message). ``queues``: the queue of each job (``analysis_queue``);
    a job not in it goes to ``analysis``.
    """
    if not job_ids:
        return
    settings = settings or get_settings()
    routes = dict(queues or {})

    def _send(_: Session) -> None:
        if background:
            _background_publisher(os.getpid()).put(settings, job_ids, routes)
        else:
            _send_all(settings, job_ids, routes)

    event.listen(db, "after_commit", _send, once=True)


def _send_all(settings: Settings, job_ids: list[uuid.UUID], queues: Mapping[uuid.UUID, str] | None = None) -> None:
    """Publish the jobs of one commit in order; after the first failure stop trying.

    A broker that just refused (or timed out on) one message will refuse the next ones too:
    trying each would cost one connection timeout per file (a 50-file upload during a Redis
    outage took 32 s). The rows are committed as queued, so the reconciler sends the rest.
    """
    for sent, job_id in enumerate(job_ids):
        try:
            queue_name = (queues or {}).get(job_id, ANALYSIS_QUEUE)
            if queue_name == ANALYSIS_QUEUE:
                send_analysis(job_id, settings)
            else:
                send_analysis(job_id, settings, queue=queue_name)
        except (OperationalError, DBAPIError, OSError):  # kombu, the SQL broker, sockets
            logger.warning(
                "broker unreachable; %d job(s) left for the reconciler",
                len(job_ids) - sent,
                extra={"job_id": str(job_id)},
            )
            return


_Batch = tuple[Settings, list[uuid.UUID], Mapping[uuid.UUID, str]]


class _Publisher:
    """A daemon thread that publishes committed jobs in the order they were handed over."""

    def __init__(self) -> None:
        self._pending: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sightline-publisher", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, settings: Settings, job_ids: list[uuid.UUID], queues: Mapping[uuid.UUID, str]) -> None:
        self._pending.put((settings, job_ids, queues))

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
