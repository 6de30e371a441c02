"""The beat's scheduler: maintenance runs in the beat process itself, never through the queue.

A maintenance message sent to the ``analysis`` queue waits behind the whole backlog (and,
with an expiry, is dropped): a killed worker's job then waits until the queue drains, just
when it matters most. So ``LocalScheduler`` keeps Celery beat's schedule (and its schedule
file) but runs each due entry in the beat process, on a thread of its own per entry: a slow
sweep (it pushes results to PACS) never delays the reconciler, and an entry still running
when it falls due again is skipped, not stacked. The beat never publishes to the broker
itself; the reconciler re-sends jobs through ``service.queue`` after its commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

from service.queue import RECONCILE_EXPLANATIONS_TASK, RECONCILE_TASK, SWEEP_SERIES_TASK
from service.settings import Settings, get_settings
from worker.explain import reconcile_explanations
from worker.metrics import MAINTENANCE_LAST_SUCCESS, MAINTENANCE_RUNS
from worker.reconcile import reconcile_jobs
from worker.series import sweep_quiet_series

logger = logging.getLogger(__name__)

MAINTENANCE: dict[str, Callable[[Settings], object]] = {
    RECONCILE_TASK: reconcile_jobs,
    SWEEP_SERIES_TASK: sweep_quiet_series,
    RECONCILE_EXPLANATIONS_TASK: reconcile_explanations,
}


def run_maintenance(task: str, settings: Settings) -> bool:
    """Run one maintenance task now; an error is logged and counted, never raised."""
    try:
        MAINTENANCE[task](settings)
    except Exception:  # the beat outlives a failed run; the next one retries
        MAINTENANCE_RUNS.labels(task=task, outcome="error").inc()
        logger.exception("maintenance run failed", extra={"task": task})
        return False
    MAINTENANCE_RUNS.labels(task=task, outcome="ok").inc()
    MAINTENANCE_LAST_SUCCESS.labels(task=task).set(time.time())
    return True


class LocalScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery beat's persistent schedule, with every entry executed here instead of sent."""

    producer = None  # never connect to the broker for scheduling: nothing is sent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._running: dict[str, threading.Thread] = {}
        super().__init__(*args, **kwargs)

    def apply_async(self, entry: ScheduleEntry, producer: object = None, advance: bool = True, **_: Any) -> None:
        entry = self.reserve(entry) if advance else entry
        try:
            self.start_run(entry.task)
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()

    def start_run(self, task: str) -> threading.Thread | None:
        """Start ``task`` on its own thread unless its previous run is still going."""
        if task not in MAINTENANCE:
            logger.error("unknown maintenance task in the beat schedule", extra={"task": task})
            return None
        previous = self._running.get(task)
        if previous is not None and previous.is_alive():
            MAINTENANCE_RUNS.labels(task=task, outcome="skipped").inc()
            logger.warning("maintenance still running; this run skipped", extra={"task": task})
            return None
        thread = threading.Thread(
            target=run_maintenance, args=(task, get_settings()), name=f"maintenance:{task}", daemon=True
        )
        self._running[task] = thread
        thread.start()
        return thread
