"""Appending to the audit trail (``audit_events``): one row per view or change, in the caller's
unit of work, so it commits or rolls back with what it records. Rows are never updated or
deleted (on PostgreSQL a trigger refuses both). Details are small JSON objects of labels and
states, never patient names or IDs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.db.tables import AuditEvent, utcnow


def record_event(
    db: Session,
    *,
    actor: str,
    role: str,
    action: str,
    study_uid: str | None,
    client: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    db.add(
        AuditEvent(
            at=utcnow(),
            actor=actor,
            role=role,
            action=action,
            study_instance_uid=study_uid,
            client=client[:64] if client else None,
            detail=detail,
        )
    )
