"""One exception hierarchy, one JSON shape: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import DecompressionBomb, ModelLibraryError
from service.logging_setup import error_frames

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class SightlineError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SightlineError):
    status_code = 400
    code = "bad_request"


class Unauthenticated(SightlineError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(SightlineError):
    status_code = 403
    code = "forbidden"


class NotFound(SightlineError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(SightlineError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(SightlineError):
    status_code = 415
    code = "unsupported_media_type"


class UnprocessableInput(SightlineError):
    status_code = 422
    code = "unprocessable"


class Conflict(SightlineError):
    status_code = 409
    code = "conflict"


class ServiceUnavailable(SightlineError):
    status_code = 503
    code = "unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """Only for OpenAPI: the ``DBAPIError`` handler below answers it (``Retry-After: 1``)."""

    code = "database_unavailable"


class InvalidValue(UnprocessableInput):
    """A value the database refuses to store or compare (``DataError``): the client's to fix."""

    code = "invalid_value"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_responses(*errors: type[SightlineError]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route so OpenAPI lists the errors it can return."""
    return {err.status_code: {"description": err.code, "model": ErrorEnvelope} for err in errors}


# Every route that opens a session (or authenticates a token) can answer this 503.
DATABASE_RESPONSES = error_responses(DatabaseUnavailable)

# SQLSTATE class 22 ("data exception") reasons worth naming; the driver's own message can quote
# the value, which may be patient data, so it never reaches the client or the log.
_DATA_REASONS = {
    "22001": "a text value is too long",
    "22003": "a number is out of range",
    "22007": "a date or time is malformed",
    "22008": "a date or time is out of range",
    "22021": "text holds a byte sequence that is not valid",
    "22P02": "a value has the wrong syntax for its type",
    "22P05": "text holds a character the database cannot store",
}


def data_error_message(exc: BaseException) -> str:
    """Why the database refused a value of the request, without the value."""
    orig = getattr(exc, "orig", exc)
    if isinstance(exc, UnicodeEncodeError) or isinstance(orig, UnicodeEncodeError):
        reason = "text holds a character that cannot be encoded (a lone surrogate)"
    elif "NUL (0x00)" in str(orig):
        reason = "text holds a NUL byte"
    elif isinstance(exc, OverflowError):
        reason = "a number is out of range"
    else:
        reason = _DATA_REASONS.get(str(getattr(orig, "sqlstate", "") or ""), "a value is not valid for its type")
    return f"the database refused a value of the request: {reason}"


def raised_binding_parameters(exc: BaseException) -> bool:
    """The exception left the database driver while it bound a statement's parameters.

    sqlite3 raises a bare ``OverflowError`` for an int beyond 64 bits and psycopg a bare
    ``UnicodeEncodeError`` for a lone surrogate: neither is wrapped in a DBAPI error. Raised
    anywhere else, they are our bugs and stay 500s.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module.split(".")[0] in {"sqlalchemy", "psycopg", "sqlite3"}


def model_error_status(exc: ModelLibraryError) -> int:
    return 413 if isinstance(exc, DecompressionBomb) else 422


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the gateway in the one JSON shape."""

    @app.exception_handler(SightlineError)
    async def _sightline(_: Request, exc: SightlineError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=headers)

    @app.exception_handler(ModelLibraryError)
    async def _model(_: Request, exc: ModelLibraryError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), model_error_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse(error_body("validation_error", message), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # The headers carry ``Allow`` for a 405 (RFC 9110 §15.5.6).
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # Invalid text, a number out of range, a malformed value: the client's error, not an
        # outage. A 503 here would have clients retry for ever and page the operators.
        logger.info("database refused a value", extra={"error_type": type(exc.orig).__name__})
        return JSONResponse(error_body(InvalidValue.code, data_error_message(exc)), 422)

    @app.exception_handler(UnicodeEncodeError)
    @app.exception_handler(OverflowError)
    async def _unbindable(_: Request, exc: Exception) -> JSONResponse:
        # A lone surrogate (a JSON ``"\\ud800"`` escape) or a huge int that the driver cannot bind.
        if not raised_binding_parameters(exc):
            raise exc  # our bug: the catch-all below answers 500
        logger.info("database refused a value", extra={"error_type": type(exc).__name__})
        return JSONResponse(error_body(InvalidValue.code, data_error_message(exc)), 422)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        # Deadlocks, serialisation failures, lock timeouts and lost connections: the
        # transaction was rolled back, nothing was kept, and the client may simply retry.
        logger.error("database error", extra={"error_type": type(exc.orig).__name__, "where": error_frames(exc)})
        body = error_body("database_unavailable", "the database could not complete the request; retry")
        return JSONResponse(body, 503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", extra={"error_type": type(exc).__name__, "where": error_frames(exc)})
        return JSONResponse(error_body("internal_error", "internal server error"), 500)
