"""API tokens: random secrets shown once, stored as SHA-256 digests.

A fast hash is right here (unlike passwords): tokens carry 256 bits of entropy, so a
stolen table cannot be brute-forced, and lookup by digest stays one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import ApiToken, Role

TOKEN_PREFIX = "sl_"

# Which roles satisfy a requirement: admin can do everything.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.ingest: frozenset({Role.ingest, Role.admin}),
    Role.reader: frozenset({Role.reader, Role.admin}),
    Role.admin: frozenset({Role.admin}),
}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(db: Session, *, role: Role, name: str) -> str:
    """Create a token row and return the secret; it cannot be recovered later."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.add(ApiToken(name=name, role=role, token_hash=digest(token), prefix=token[:8]))
    db.flush()
    return token


def find_token(db: Session, token: str) -> ApiToken | None:
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def allows(granted: Role, required: Role) -> bool:
    return granted in GRANTS[required]
