"""Claim, release and report a study: one reader holds a study's reading task at a time.

Every change locks the study row first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
serialises writers), then re-reads it, so of two concurrent claims exactly one wins and
the other sees the winner. The claim carries a Transaction UID (PS3.4 CC.1.1): the
client's when claimed through UPS-RS, a fresh ``2.25.<uuid4>`` when claimed natively.
The native API never shows it; it is the lock UPS-RS clients must present to complete
or cancel (see service.workflow.ups).
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.session import begin_write
from service.db.tables import Role, Study, as_utc, utcnow
from service.deps import Principal
from service.errors import Conflict
from service.workflow.schemas import StudyClaim
from service.worklist.service import StudyNotFound


class StudyClaimed(Conflict):
    code = "study_claimed"


class StudyReported(Conflict):
    code = "study_reported"


class NotClaimant(Conflict):
    code = "not_claimant"


def new_transaction_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def locked_study(db: Session, study_uid: str, *, lock: bool = True) -> Study:
    """The study row, locked for the rest of the transaction and read afresh."""
    stmt = select(Study).where(Study.study_instance_uid == study_uid)
    if lock:
        begin_write(db)  # SQLite has no row locks: take its write lock (see service.db.series_state)
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    study = db.scalar(stmt)
    if study is None:
        raise StudyNotFound("no study with this Study Instance UID")
    return study


def claim(db: Session, principal: Principal, study: Study, *, transaction_uid: str | None = None) -> bool:
    """Give the (locked) study to ``principal``; False when they already held it (nothing changes)."""
    if study.reported_at is not None:
        raise StudyReported(f"the study was reported by {study.reported_by}")
    if study.claimed_by is not None:
        if study.claimed_by != principal.token_name:
            raise StudyClaimed(f"the study is claimed by {study.claimed_by}")
        return False
    study.claimed_by = principal.token_name
    study.claimed_at = utcnow()
    study.claim_transaction_uid = transaction_uid or new_transaction_uid()
    db.flush()
    return True


def release(db: Session, principal: Principal, study: Study) -> str:
    """Drop the claim (the holder, or an admin for anyone's); the former holder."""
    holder = study.claimed_by
    if holder is None:
        raise NotClaimant("the study is not claimed")
    if holder != principal.token_name and principal.role is not Role.admin:
        raise NotClaimant(f"the study is claimed by {holder}")
    clear_claim(study)
    db.flush()
    return holder


def report(db: Session, principal: Principal, study: Study) -> None:
    """Mark the study reported by its claimant; the claim ends."""
    if study.reported_at is not None:
        raise StudyReported(f"the study was reported by {study.reported_by}")
    if study.claimed_by != principal.token_name:
        raise NotClaimant("claim the study before reporting it")
    mark_reported(study, principal.token_name)
    db.flush()


def mark_reported(study: Study, reporter: str) -> None:
    study.reported_by = reporter
    study.reported_at = utcnow()
    clear_claim(study)


def clear_claim(study: Study) -> None:
    study.claimed_by = None
    study.claimed_at = None
    study.claim_transaction_uid = None


def claim_view(study: Study) -> StudyClaim:
    return StudyClaim(
        study_instance_uid=study.study_instance_uid,
        claimed_by=study.claimed_by,
        claimed_at=as_utc(study.claimed_at) if study.claimed_at else None,
        reported_by=study.reported_by,
        reported_at=as_utc(study.reported_at) if study.reported_at else None,
    )
