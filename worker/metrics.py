"""The metrics ports of the worker and beat processes (the API serves its own ``/metrics``).

Worker: ``sightline_job_seconds`` and ``sightline_job_failures_total`` are counted where the
job runs, in the pool's child processes. The worker's main process serves them on
``SIGHTLINE_WORKER_METRICS_PORT`` (one port per pod, one scrape target) and, when
``PROMETHEUS_MULTIPROC_DIR`` is set (``sightline worker`` sets it to a fresh directory),
reads every child's values from that directory with prometheus_client's multiprocess
collector; a dead or replaced child's counts stay in the sum. Without it (``--pool=solo``
started by hand) the main process runs the jobs and serves its own registry.

Beat: the maintenance runs (reconciler, series sweep) and the queue depth, exported once
per deployment (the beat is a single replica) rather than once per API replica.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from service.db.session import session_factory
from service.db.tables import AnalysisJob, JobStatus
from service.queue import ANALYSIS_QUEUE
from service.settings import Settings

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

MAINTENANCE_RUNS = Counter(
    "sightline_maintenance_runs_total", "Runs of the beat's maintenance tasks", ["task", "outcome"]
)
MAINTENANCE_LAST_SUCCESS = Gauge(
    "sightline_maintenance_last_success_timestamp_seconds",
    "Unix time of the last successful run of each maintenance task (alert when it lags)",
    ["task"],
    multiprocess_mode="max",
)


class QueueDepthCollector(Collector):
    """``sightline_queue_depth``: jobs waiting in the database (the truth) and messages waiting
    in the broker's ``analysis`` list (what KEDA scales on), read at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sightline_queue_depth", "Analysis jobs waiting, by where they are counted", labels=["source"]
        )
        try:
            with session_factory(self.settings)() as db:
                queued = db.scalar(
                    select(func.count()).select_from(AnalysisJob).where(AnalysisJob.status == JobStatus.queued)
                )
            family.add_metric(["database"], float(queued or 0))
        except Exception:  # a scrape must answer even while the database is away
            logger.warning("queue depth: database unreachable", exc_info=True)
        length = broker_queue_length(self.settings.broker_url)
        if length is not None:
            family.add_metric(["broker"], float(length))
        yield family


def broker_queue_length(broker_url: str) -> int | None:
    """LLEN of the ``analysis`` list on a Redis broker; ``None`` for other brokers or on error."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    try:
        client = redis.Redis.from_url(broker_url, socket_timeout=2)
        try:
            return int(client.llen(ANALYSIS_QUEUE))
        finally:
            client.close()
    except redis.RedisError:
        logger.warning("queue depth: broker unreachable", exc_info=True)
        return None


def serve_worker_metrics(port: int) -> bool:
    """Serve this worker's job metrics on ``port`` (0: off). Called in the main process before
    the pool forks. A port already taken is logged and skipped: metrics must not stop analysis."""
    if port == 0:
        return False
    directory = os.environ.get(MULTIPROC_ENV)
    registry: CollectorRegistry = REGISTRY
    if directory:
        _clear_stale_files(Path(directory))
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return _start(port, registry, "worker")


def serve_beat_metrics(port: int, settings: Settings) -> bool:
    """Serve the beat's maintenance metrics and the queue depth on ``port`` (0: off)."""
    if port == 0:
        return False
    REGISTRY.register(QueueDepthCollector(settings))
    return _start(port, REGISTRY, "beat")


def _start(port: int, registry: CollectorRegistry, role: str) -> bool:
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        logger.error(
            "metrics port unavailable; metrics not served", extra={"port": port, "role": role, "error": str(exc)}
        )
        return False
    logger.info("metrics served", extra={"port": port, "role": role})
    return True


def _clear_stale_files(directory: Path) -> None:
    """Drop the files of processes from an earlier run (a restarted container keeps its emptyDir);
    this process's own files stay: with the solo pool it runs the jobs itself."""
    own = f"_{os.getpid()}.db"
    for path in directory.glob("*.db"):
        if not path.name.endswith(own):
            path.unlink(missing_ok=True)


def mark_child_dead(pid: int) -> None:
    """A pool child exited: its live gauges go (its counters and histograms stay counted)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
