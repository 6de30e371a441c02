"""Keyset cursors of the worklist: the last row's stored sort key, opaque to clients.

The key is ``(sort_priority, sort_score, received_at, id)``, the columns of
``service.db.tables.sort_key_of``, all ascending. The cursor is base64url JSON with a
version, so a cursor from before the stored key (no ``v``) is refused as 400
``invalid_cursor`` rather than read as a position it never meant.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from datetime import datetime
from typing import NamedTuple

from service.db.tables import Study, as_utc
from service.errors import BadRequest

VERSION = 2
MIN_SORT_PRIORITY, MAX_SORT_PRIORITY = -2, 0  # -(stat .. routine), as ingest stores clinical_priority


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class SortKey(NamedTuple):
    priority: int
    score: float
    received_at: datetime
    id: uuid.UUID


def sort_key(study: Study) -> SortKey:
    """The stored sort key of a loaded study row."""
    return SortKey(study.sort_priority, study.sort_score, as_utc(study.received_at), study.id)


def encode_cursor(key: SortKey) -> str:
    body = {"v": VERSION, "p": key.priority, "s": key.score, "r": key.received_at.isoformat(), "i": str(key.id)}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    """The sort key of a cursor from ``encode_cursor``; anything else is 400 ``invalid_cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _cursor_key(json.loads(raw))
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise InvalidCursor("cursor is not one this server issued; start again without it") from exc


def _cursor_key(body: object) -> SortKey:
    """Every field checked for type and range, so nothing odd ever reaches a bound parameter."""
    if not isinstance(body, dict):
        raise TypeError("cursor is not a JSON object")
    if body.get("v") != VERSION or type(body["v"]) is not int:
        raise ValueError("cursor is of another version")
    priority, score, received, ident = body["p"], body["s"], body["r"], body["i"]
    if type(priority) is not int or not MIN_SORT_PRIORITY <= priority <= MAX_SORT_PRIORITY:
        raise ValueError("cursor priority is not -2, -1 or 0")
    if type(score) not in (int, float) or not math.isfinite(score):
        raise ValueError("cursor score is not a finite number")
    if not isinstance(received, str) or not isinstance(ident, str):
        raise TypeError("cursor time and id must be strings")
    return SortKey(priority, float(score), as_utc(datetime.fromisoformat(received)), uuid.UUID(ident))
