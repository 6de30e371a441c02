"""Annotated dependency aliases: DbSession, Reader, Ingestor, Admin, AppSettings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.auth.tokens import allows, find_token, is_expired, needs_use_recorded, record_use
from service.db.session import session_factory, unit_of_work
from service.db.tables import ApiToken, Role, utcnow
from service.errors import Forbidden, Unauthenticated
from service.settings import Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings_dep)]


def get_session(settings: AppSettings) -> Iterator[Session]:
    """One transaction per request: commit on success, roll back (and drop new blobs) on error."""
    with unit_of_work(settings) as db:
        yield db


# scope="function": the commit runs before the response is sent, so a 2xx means committed
# (FastAPI's default would commit after the response, losing a failed commit silently).
DbSession = Annotated[Session, Depends(get_session, scope="function")]


def get_store(settings: AppSettings) -> BlobStore:
    return BlobStore(settings.storage_dir)


Store = Annotated[BlobStore, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")


@dataclass(frozen=True)
class Principal:
    token_name: str
    role: Role


def authenticate(settings: Settings, authorization: str | None, required: Role) -> Principal:
    """Check an ``Authorization`` header value against the token table and the required role."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token")
    # A short read-only session of its own, so a 401 never opens the request's unit of work.
    with session_factory(settings)() as db:
        row = find_token(db, token.strip())
    now = utcnow()
    if row is None:
        raise Unauthenticated("invalid or revoked token")
    if is_expired(row, now):
        raise Unauthenticated("token expired")
    if not allows(row.role, required):
        raise Forbidden(f"this endpoint needs the {required.value} role")
    if needs_use_recorded(row, now):
        _record_use(settings, row, now)
    return Principal(token_name=row.name, role=row.role)


def _record_use(settings: Settings, row: ApiToken, now: datetime) -> None:
    """Write ``last_used_at`` in its own short transaction; bookkeeping never fails a request."""
    try:
        with session_factory(settings)() as db:
            record_use(db, row, now)
            db.commit()
    except SQLAlchemyError as exc:
        logger.warning("could not record token use", extra={"token_prefix": row.prefix, "error": type(exc).__name__})


def require_role(required: Role) -> Callable[..., Principal]:
    def _check(
        request: Request,
        settings: AppSettings,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        return authenticate(settings, request.headers.get("authorization"), required)

    return _check


Reader = Annotated[Principal, Depends(require_role(Role.reader))]
Ingestor = Annotated[Principal, Depends(require_role(Role.ingest))]
Admin = Annotated[Principal, Depends(require_role(Role.admin))]
