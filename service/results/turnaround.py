"""Study turnaround: from the last instance of a study received to its results stored at
every destination (or, with no destination configured, stored here).

Recorded on the study row when the last delivery of its current result generation
succeeds, and exported by the API's ``/metrics`` as the histogram
``sightline_study_turnaround_seconds``, counted in the database so that every replica
reports the same numbers whichever process did the work.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.tables import Delivery, DeliveryStatus, Instance, ResultObject, Study, as_utc

BUCKETS = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1800.0, 3600.0)


def record_if_delivered(db: Session, study: Study, now: datetime) -> bool:
    """Under the study lock: if every delivery of the current generation is done, record the turnaround."""
    undelivered = db.scalar(
        select(func.count())
        .select_from(Delivery)
        .join(ResultObject, Delivery.result_object_id == ResultObject.id)
        .where(
            ResultObject.study_id == study.id,
            ResultObject.generation == study.results_generation,
            Delivery.status != DeliveryStatus.delivered,
        )
    )
    if undelivered or study.results_delivered_at is not None:
        return False
    last_received = db.scalar(select(func.max(Instance.received_at)).where(Instance.study_id == study.id))
    study.results_delivered_at = now
    if last_received is not None:
        study.turnaround_seconds = max(0.0, (as_utc(now) - as_utc(last_received)).total_seconds())
    return True


def turnaround_buckets(db: Session) -> tuple[list[tuple[str, float]], float, int]:
    """Cumulative bucket counts (Prometheus ``le`` labels), the sum and the count, in one query."""
    seconds = Study.turnaround_seconds
    columns = [func.count(seconds).filter(seconds <= bound) for bound in BUCKETS]
    row = db.execute(select(*columns, func.coalesce(func.sum(seconds), 0.0), func.count(seconds))).one()
    counts = [(repr(bound), float(row[i])) for i, bound in enumerate(BUCKETS)]
    total, count = float(row[-2]), int(row[-1])
    return [*counts, ("+Inf", float(count))], total, count
