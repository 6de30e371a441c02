"""API tokens: random secrets shown once, stored as SHA-256 digests.

A fast hash is right here (unlike passwords): tokens carry 256 bits of entropy, so a
stolen table cannot be brute-forced, and lookup by digest stays one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db.tables import ApiToken, Role, as_utc, utcnow

TOKEN_PREFIX = "sl_"
# ``last_used_at`` is written at most this often per token, so reads stay reads.
LAST_USE_RESOLUTION = timedelta(seconds=60)

# Which roles satisfy a requirement: admin can do everything.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.ingest: frozenset({Role.ingest, Role.admin}),
    Role.reader: frozenset({Role.reader, Role.admin}),
    Role.admin: frozenset({Role.admin}),
}


class TokenNotFound(LookupError):
    """No active token has that name or prefix."""


class AmbiguousToken(LookupError):
    """More than one active token matches; ``candidates`` lists them."""

    def __init__(self, query: str, candidates: list[ApiToken]) -> None:
        listed = ", ".join(f"{row.prefix} ({row.name}, {row.role.value})" for row in candidates)
        super().__init__(f"{query!r} matches {len(candidates)} tokens: {listed}; give one prefix")
        self.candidates = candidates


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(db: Session, *, role: Role, name: str, expires_in: timedelta | None = None) -> str:
    """Create a token row and return the secret; it cannot be recovered later."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = None if expires_in is None else utcnow() + expires_in
    db.add(ApiToken(name=name, role=role, token_hash=digest(token), prefix=token[:8], expires_at=expires_at))
    db.flush()
    return token


def find_token(db: Session, token: str) -> ApiToken | None:
    """The active (not revoked) row of ``token``, expired or not: the caller says which it was."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def is_expired(row: ApiToken, now: datetime) -> bool:
    return row.expires_at is not None and as_utc(row.expires_at) <= now


def needs_use_recorded(row: ApiToken, now: datetime) -> bool:
    """True when ``last_used_at`` is older than the resolution: only then is a write worth it."""
    return row.last_used_at is None or as_utc(row.last_used_at) < now - LAST_USE_RESOLUTION


def record_use(db: Session, row: ApiToken, now: datetime) -> bool:
    """Set ``last_used_at`` unless another request did within the resolution; True if written.

    Conditional, so concurrent requests on many replicas write once a minute, not once each.
    """
    result = db.execute(
        update(ApiToken)
        .where(ApiToken.id == row.id)
        .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - LAST_USE_RESOLUTION))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def list_tokens(db: Session) -> list[ApiToken]:
    return list(db.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.name)))


def revoke_token(db: Session, query: str) -> ApiToken:
    """Revoke the one active token whose name is ``query`` or whose prefix starts with it."""
    candidates = list(
        db.scalars(
            select(ApiToken)
            .where(ApiToken.revoked_at.is_(None))
            .where(or_(ApiToken.name == query, ApiToken.prefix.startswith(query, autoescape=True)))
            .order_by(ApiToken.created_at)
        )
    )
    if not candidates:
        raise TokenNotFound(f"no active token is named {query!r} or has a prefix starting with it")
    if len(candidates) > 1:
        raise AmbiguousToken(query, candidates)
    row = candidates[0]
    row.revoked_at = utcnow()
    db.flush()
    return row


def allows(granted: Role, required: Role) -> bool:
    return granted in GRANTS[required]
