"""``/healthz`` (the process is alive), ``/readyz`` (it can take and keep an upload), ``/metrics``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.deps import AppSettings
from service.errors import DATABASE_RESPONSES
from service.health.readiness import check_broker, check_database, check_storage
from service.metrics import refresh_queue_gauges

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    """The body of ``/readyz``: 200 ``ready`` or ``degraded`` (the broker is down: uploads are
    still kept, the reconciler sends their jobs later), 503 ``unavailable``."""

    status: Literal["ready", "degraded", "unavailable"]
    checks: dict[str, str]


METRICS_200: dict[str, Any] = {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database reachable and migrated, storage writable (broker: degraded only)",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Database unreachable, schema behind the migration head, or storage unwritable",
        }
    },
)
def readyz(settings: AppSettings) -> JSONResponse:
    """``checks``: ``database`` ok/unreachable, ``schema`` current/behind/ahead/unknown (``ahead``,
    migrated by a newer release, is ready), ``broker`` ok/unreachable, ``storage`` ok/unwritable."""
    database, schema = check_database(settings)
    checks: dict[str, str] = {"database": database, "schema": schema}
    checks |= {"broker": check_broker(settings.broker_url), "storage": check_storage(settings)}
    ready = database == "ok" and schema in ("current", "ahead") and checks["storage"] == "ok"
    status = ("ready" if checks["broker"] == "ok" else "degraded") if ready else "unavailable"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: METRICS_200, **DATABASE_RESPONSES},
)
def metrics(settings: AppSettings) -> Response:
    refresh_queue_gauges(settings)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
