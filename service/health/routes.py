"""``/healthz`` (the process is alive), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from service.db.session import session_factory
from service.deps import AppSettings
from service.metrics import refresh_queue_gauges
from service.queue import publisher
from service.storage import BlobStore

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    """The body of ``/readyz``, whether ready (200) or not (503)."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, bool]


METRICS_200: dict[str, Any] = {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database, broker and storage reachable",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is unreachable; ``checks`` says which"}},
)
def readyz(settings: AppSettings) -> JSONResponse:
    checks = {
        "database": _check_database(settings),
        "broker": _check_broker(settings.broker_url),
        "storage": BlobStore(settings.storage_dir).writable(),
    }
    ready = all(checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={200: METRICS_200})
def metrics(settings: AppSettings) -> Response:
    refresh_queue_gauges(settings)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _check_database(settings: AppSettings) -> bool:
    try:
        with session_factory(settings)() as db:
            db.execute(text("SELECT 1"))
        return True
    except Exception:  # any driver error means "not ready"; the reason goes to the log only
        logger.warning("readiness: database unreachable", exc_info=True)
        return False


def _check_broker(broker_url: str) -> bool:
    try:
        with publisher(broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:  # kombu raises transport-specific errors; all mean "not ready"
        logger.warning("readiness: broker unreachable", exc_info=True)
        return False
