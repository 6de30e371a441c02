"""What ``/readyz`` checks: database reachable, its schema at the migration head, blob storage
writable, and the broker (which only degrades readiness).

A pod is ready when it can take an upload and keep it: the database (rows are the truth, jobs
included), a schema that matches this code, and writable storage for the blobs. A broker outage
does not stop that: the job rows are committed and the reconciler re-sends them once the broker
is back, so an unreachable broker is reported (``degraded``) but keeps the pod in the Service.
"""

from __future__ import annotations

import logging
import tempfile
from functools import lru_cache
from typing import Literal

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from service.db.migrate import alembic_config
from service.db.session import session_factory
from service.queue import publisher
from service.settings import Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)

DatabaseState = Literal["ok", "unreachable"]
SchemaState = Literal["current", "behind", "ahead", "unknown"]
BrokerState = Literal["ok", "unreachable"]
StorageState = Literal["ok", "unwritable"]


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The head revisions this code ships (read once: the scripts cannot change under a process)."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def schema_state(conn: Connection) -> SchemaState:
    """``current`` at the head; ``behind`` unmigrated or older; ``ahead`` migrated by newer code.

    ``ahead`` is ready: migrations are expand-then-contract, so during a rolling deployment the
    pods still on the old image keep serving on the new schema.
    """
    current = frozenset(MigrationContext.configure(conn).get_current_heads())
    heads = migration_heads()
    if current == heads:
        return "current"
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    known = {revision.revision for revision in script.walk_revisions()}
    return "ahead" if current - known else "behind"


def check_database(settings: Settings) -> tuple[DatabaseState, SchemaState]:
    try:
        with session_factory(settings)() as db:
            return "ok", schema_state(db.connection())
    except Exception:  # any driver error means "not ready"; the reason goes to the log only
        logger.warning("readiness: database unreachable", exc_info=True)
        return "unreachable", "unknown"


def check_broker(broker_url: str) -> BrokerState:
    try:
        with publisher(broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception:  # kombu raises transport-specific errors; all mean "unreachable"
        logger.warning("readiness: broker unreachable; uploads are kept for the reconciler", exc_info=True)
        return "unreachable"


def check_storage(settings: Settings) -> StorageState:
    """Write and remove a probe file: permission bits say nothing to root or on a read-only mount."""
    try:
        store = BlobStore(settings.storage_dir)
        if not store.writable():
            return "unwritable"
        with tempfile.NamedTemporaryFile(dir=settings.storage_dir, prefix=".readyz-"):
            pass
        return "ok"
    except OSError:
        logger.warning("readiness: blob storage unwritable", exc_info=True)
        return "unwritable"
