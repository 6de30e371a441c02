"""Access log lines without query strings: worklist filters such as ``patient_id`` stay out.

The same middleware counts requests by route template (``/api/v1/studies/{study_uid}``,
not the raw path): identifiers would make one time series per study and leak them."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from service.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("sightline.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # no route matched (404s, scanners): one series for all of them


def route_template(request: Request) -> str:
    """The matched route's full path template (``/api/v1/studies/{study_uid}``).

    FastAPI (0.16x) keeps included routers nested: ``scope["route"].path`` is then relative to
    the router's prefix, and the full template is on the request's effective route context.
    A test pins this (tests/worker/test_metrics_http.py), so an upgrade that moves it fails there.
    """
    context = request.scope.get("fastapi", {}).get("effective_route_context")
    path = getattr(context, "path", None) or getattr(request.scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


def install_access_log(app: FastAPI) -> None:
    """Replaces uvicorn's access log (``sightline serve`` turns that one off)."""

    @app.middleware("http")
    async def _log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        method = request.method if request.method in METHODS else "OTHER"
        route = route_template(request)
        HTTP_REQUESTS.labels(method=method, route=route, status=str(response.status_code)).inc()
        HTTP_LATENCY.labels(method=method, route=route).observe(elapsed)
        logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 1),
            },
        )
        return response
