"""Prometheus metrics. Queue depth is read from the database, the source of truth.

Where each is served (scrape every one; see deploy/k8s and deploy/grafana):
- the API's ``/metrics``: ingest counters, HTTP requests by route template, the turnaround
  histogram, and ``sightline_jobs{status}``, a snapshot of the whole database taken by every
  API replica (so ``max()`` it, never ``sum()``);
- each worker's metrics port: ``sightline_job_seconds``, ``sightline_job_failures_total``
  (``worker.metrics``);
- the beat's metrics port: ``sightline_queue_depth{source}``, exported once per deployment,
  the maintenance runs, and the ``retries_exhausted`` failures that the reconciler records.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from service.db.session import session_factory
from service.db.tables import AnalysisJob, JobStatus
from service.results.turnaround import turnaround_buckets
from service.settings import Settings

JOBS_BY_STATUS = Gauge("sightline_jobs", "Analysis jobs by status", ["status"])
INGESTED = Counter("sightline_instances_ingested_total", "Instances stored", ["source"])
INGEST_REJECTED = Counter("sightline_ingest_rejected_total", "Uploads refused", ["code"])
JOB_LATENCY = Histogram(
    "sightline_job_seconds",
    "Analysis job duration in the worker",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
JOB_FAILURES = Counter("sightline_job_failures_total", "Jobs that ended failed", ["code"])
HTTP_REQUESTS = Counter(
    "sightline_http_requests_total",
    "HTTP requests by route template (never the raw path)",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "sightline_http_request_seconds",
    "HTTP request duration until the response starts, by route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class TurnaroundCollector(Collector):
    """``sightline_study_turnaround_seconds``: a histogram counted in the database at scrape time,
    so it holds every study whichever worker delivered it (see ``service.results.turnaround``)."""

    def __init__(self) -> None:
        self.snapshot: tuple[list[tuple[str, float]], float] = ([("+Inf", 0.0)], 0.0)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets, total = self.snapshot
        yield HistogramMetricFamily(
            "sightline_study_turnaround_seconds",
            "From a study's last instance received to its result objects stored at every destination",
            buckets=buckets,
            sum_value=total,
        )


TURNAROUND = TurnaroundCollector()
REGISTRY.register(TURNAROUND)


def refresh_queue_gauges(settings: Settings) -> None:
    with session_factory(settings)() as db:
        rows = db.execute(select(AnalysisJob.status, func.count()).group_by(AnalysisJob.status)).all()
        buckets, total, _ = turnaround_buckets(db)
    TURNAROUND.snapshot = (buckets, total)
    counts = {status: count for status, count in rows}
    for status in JobStatus:
        JOBS_BY_STATUS.labels(status=status.value).set(counts.get(status, 0))
