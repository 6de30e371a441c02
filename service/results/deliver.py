"""Delivering result objects: claim due deliveries, push them, record every attempt.

A delivery is claimed in a short transaction (attempts + 1, next attempt pushed past a
lease), pushed with no database transaction open, and its outcome recorded in another:
delivered; pending again after an exponential backoff; or failed once the destination
refused it for good or ``delivery_max_attempts`` ran out. A worker that dies mid-push
leaves the delivery pending; it is tried again when the lease runs out. The last
delivery of a study's current generation records its turnaround.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.series_state import lock_study
from service.db.session import unit_of_work
from service.db.tables import Delivery, DeliveryStatus, ResultObject, utcnow
from service.results.transport import Outcome, Outgoing, send
from service.results.turnaround import record_if_delivered
from service.settings import Destination, Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)

DELIVERY_BATCH = 50
LEASE = timedelta(minutes=5)  # past any push's time limit: a claim older than this was abandoned


@dataclass(frozen=True)
class Claimed:
    delivery_id: uuid.UUID
    study_id: uuid.UUID
    attempts: int
    item: Outgoing


def deliver_due(settings: Settings) -> int:
    """Push every due delivery to its destination, one association or request per destination."""
    destinations = {d.name: d for d in settings.result_destinations}
    if not destinations:
        return 0
    claimed = claim_due(settings, utcnow(), set(destinations))
    by_destination: dict[str, list[Claimed]] = defaultdict(list)
    for name, claim in claimed:
        by_destination[name].append(claim)
    for name, claims in by_destination.items():
        _push(settings, destinations[name], claims)
    return len(claimed)


def claim_due(settings: Settings, now: datetime, names: set[str]) -> list[tuple[str, Claimed]]:
    store = BlobStore(settings.storage_dir)
    with unit_of_work(settings) as db:
        rows = db.execute(
            select(Delivery, ResultObject)
            .join(ResultObject, Delivery.result_object_id == ResultObject.id)
            .where(
                Delivery.status == DeliveryStatus.pending,
                Delivery.next_attempt_at <= now,
                Delivery.destination.in_(names),
            )
            .order_by(Delivery.next_attempt_at)
            .limit(DELIVERY_BATCH)
            .with_for_update(of=Delivery, skip_locked=True)
        ).all()
        claimed = []
        for delivery, obj in rows:
            delivery.attempts += 1
            delivery.next_attempt_at = now + LEASE
            try:
                item = Outgoing(obj.sop_class_uid, obj.sop_instance_uid, store.get(obj.blob_key))
            except FileNotFoundError:
                delivery.status, delivery.last_error = DeliveryStatus.failed, "the result object's file is missing"
                continue
            claimed.append((delivery.destination, Claimed(delivery.id, obj.study_id, delivery.attempts, item)))
    return claimed


def _push(settings: Settings, destination: Destination, claims: list[Claimed]) -> None:
    try:
        outcomes = send(
            destination,
            [c.item for c in claims],
            calling_ae=settings.dicom_ae_title,
            timeout=settings.delivery_timeout_seconds,
        )
    except Exception as exc:  # a peer's bad answer must not lose the claims: record a retry
        logger.warning("push failed", extra={"destination": destination.name, "error": type(exc).__name__})
        outcomes = [Outcome(False, True, "error", type(exc).__name__)] * len(claims)
    for claim, outcome in zip(claims, outcomes, strict=True):
        with unit_of_work(settings) as db:
            record(db, settings, claim, outcome, utcnow())
    delivered = sum(o.delivered for o in outcomes)
    logger.info("results pushed", extra={"destination": destination.name, "delivered": delivered, "sent": len(claims)})


def record(db: Session, settings: Settings, claim: Claimed, outcome: Outcome, now: datetime) -> None:
    """One attempt's outcome; under the study lock, so the turnaround is recorded exactly once."""
    study = lock_study(db, claim.study_id)
    delivery = db.get(Delivery, claim.delivery_id, with_for_update=True)
    if delivery is None or delivery.status != DeliveryStatus.pending or delivery.attempts != claim.attempts:
        return  # superseded, or claimed again after our lease ran out
    delivery.last_status = outcome.status
    delivery.last_error = outcome.error[:200] if outcome.error else None
    if outcome.delivered:
        delivery.status = DeliveryStatus.delivered
        delivery.delivered_at = now
        db.flush()
        record_if_delivered(db, study, now)
    elif outcome.retry and delivery.attempts < settings.delivery_max_attempts:
        delivery.next_attempt_at = now + backoff(settings, delivery.attempts)
    else:
        delivery.status = DeliveryStatus.failed


def backoff(settings: Settings, attempts: int) -> timedelta:
    """Wait before attempt ``attempts + 1``: the base, doubled per failure, up to the maximum."""
    seconds = settings.delivery_backoff_seconds * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.delivery_backoff_max_seconds))
