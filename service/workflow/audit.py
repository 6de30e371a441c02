"""The append-only audit trail: who viewed or changed which study, when, and from where.

``record`` adds the event to the caller's session (``service.db.audit``), so it commits (or
rolls back) with the change it records. Reading is keyset-paged on the autoincrement id; the export streams JSON
lines from a session of its own in batches, so no export holds the whole table in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from service.db.audit import record_event
from service.db.session import session_factory
from service.db.tables import AuditEvent, as_utc
from service.deps import Principal
from service.settings import Settings
from service.workflow.schemas import AuditPage, AuditQuery, AuditView

EXPORT_BATCH = 500


def record(
    db: Session,
    principal: Principal,
    action: str,
    *,
    study_uid: str | None,
    client: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event to the request's unit of work (``service.db.audit``)."""
    record_event(
        db,
        actor=principal.token_name,
        role=principal.role.value,
        action=action,
        study_uid=study_uid,
        client=client,
        detail=detail,
    )


def _filters(query: AuditQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.actor is not None:
        conditions.append(AuditEvent.actor == query.actor)
    if query.action is not None:
        conditions.append(AuditEvent.action == query.action)
    if query.study_uid is not None:
        conditions.append(AuditEvent.study_instance_uid == query.study_uid)
    return conditions


def _batch(db: Session, query: AuditQuery, after_id: int | None, limit: int) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(*_filters(query)).order_by(AuditEvent.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(AuditEvent.id > after_id)
    return list(db.scalars(stmt))


def view(event: AuditEvent) -> AuditView:
    return AuditView(
        id=event.id,
        at=as_utc(event.at),
        actor=event.actor,
        role=event.role,
        action=event.action,
        study_instance_uid=event.study_instance_uid,
        client=event.client,
        detail=event.detail,
    )


def page(db: Session, query: AuditQuery) -> AuditPage:
    """Events in id order after ``after_id``; ``next_after_id`` is null on the last page."""
    rows = _batch(db, query, query.after_id, query.limit + 1)
    items = [view(row) for row in rows[: query.limit]]
    return AuditPage(items=items, next_after_id=items[-1].id if len(rows) > query.limit else None)


def export_lines(settings: Settings, query: AuditQuery) -> Iterator[bytes]:
    """Every matching event as one JSON line, read ``EXPORT_BATCH`` rows at a time."""
    after_id = query.after_id
    with session_factory(settings)() as db:
        while True:
            rows = _batch(db, query, after_id, EXPORT_BATCH)
            for row in rows:
                yield (view(row).model_dump_json() + "\n").encode()
            if len(rows) < EXPORT_BATCH:
                return
            after_id = rows[-1].id
            db.expunge_all()
