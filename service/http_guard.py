"""Refuse text the database cannot store before any handler sees it.

PostgreSQL ``text`` cannot hold a NUL byte, and no UTF-8 encoder can write a lone surrogate.
Left alone, such a value in a query or path parameter reaches the driver, which refuses it,
and the client gets ``503 database_unavailable``: a client error dressed as an outage, so it
retries for ever and the alerts fire. This ASGI middleware answers 422 ``invalid_parameter``
instead, naming the parameter (never its value, which may be patient data), for every query
parameter, path parameter and header of every request, before routing or database access.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_body


def text_problem(value: str) -> str | None:
    """Why PostgreSQL text cannot store ``value`` (None: it can)."""
    if "\x00" in value:
        return "contains a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains invalid text (a lone surrogate)"
    return None


def _query_problem(scope: Scope) -> str | None:
    # Decoded exactly as Starlette's QueryParams decodes them, so the names match what routes see.
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        problem = text_problem(name)
        if problem:
            return f"a query parameter name {problem}"
        problem = text_problem(value)
        if problem:
            return f"query parameter '{name}' {problem}"
    return None


def _path_problem(scope: Scope, templates: list[re.Pattern[str]]) -> str | None:
    path: str = scope.get("path", "")
    problem = text_problem(path)
    if problem is None:
        return None
    for template in templates:
        match = template.match(path)
        if match is None:
            continue
        for name, value in match.groupdict().items():
            value_problem = text_problem(value)
            if value_problem:
                return f"path parameter '{name}' {value_problem}"
    return f"the path {problem}"


def path_templates(app: Any) -> list[re.Pattern[str]]:
    """The documented path templates as regular expressions, to name the parameter at fault.

    Read from OpenAPI rather than the router, whose included routers resolve their paths lazily.
    """
    try:
        paths = app.openapi()["paths"]
    except Exception:  # no OpenAPI (a bare Starlette app): the message names "the path" instead
        return []
    return [compile_path(path)[0] for path in paths]


def _header_problem(scope: Scope) -> str | None:
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1")
        if "\x00" in name:
            return "a header name contains a NUL byte"
        if b"\x00" in raw_value:
            return f"header '{_display_name(name)}' contains a NUL byte"
    return None


def _display_name(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def request_problem(scope: Scope, templates: list[re.Pattern[str]]) -> str | None:
    """The first parameter of this request that the database could not store, described."""
    return _query_problem(scope) or _path_problem(scope, templates) or _header_problem(scope)


class HttpGuard:
    """ASGI middleware: 422 ``invalid_parameter`` for text no database column can hold."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: list[re.Pattern[str]] | None = None  # built on first use: every route is included by then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._templates is None:
            self._templates = path_templates(scope.get("app"))
        problem = request_problem(scope, self._templates)
        if problem is None:
            await self.app(scope, receive, send)
            return
        await JSONResponse(error_body("invalid_parameter", problem), 422)(scope, receive, send)
