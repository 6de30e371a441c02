"""Store one DICOM instance on its own, for the DICOM protocols (C-STORE, STOW-RS).

The upload API is all or nothing per request; a C-STORE association or a STOW-RS request
is not: every instance succeeds or fails by itself (PS3.4 B.2.3, PS3.18 10.5.3). A C-STORE
is one instance in its own unit of work (``store_instance``); a STOW-RS request's instances
share one unit of work (``store_batch``: one transaction, one commit, one publish) in which
each instance's rows go in their own SAVEPOINT and a refused instance's blob is removed, so
each still stands alone. Every refusal becomes a ``SingleStoreResult`` carrying the
HTTP-style status and error code that the caller maps to a DIMSE status or a STOW Failure
Reason. Nothing is half-stored, and nothing is answered as stored before its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from models.errors import ModelLibraryError
from service.active_model import active_manifest
from service.db.session import unit_of_work
from service.errors import SightlineError, model_error_status
from service.ingest.dicom_meta import RasterContext
from service.ingest.reading import ParsedFile, parse_file
from service.ingest.schemas import UploadedInstance
from service.ingest.service import store_each
from service.settings import Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)
_NO_RASTER = RasterContext("", "", "")  # DICOM protocols carry their own UIDs
BATCH_INSTANCES = 100  # instances per transaction of a STOW-RS request (see ``store_parsed``)


@dataclass(frozen=True)
class SingleStoreResult:
    """What became of one instance: ``entry`` when stored (or already stored), else the refusal."""

    entry: UploadedInstance | None
    status_code: int  # 200 stored or duplicate; 4xx refused for this instance; 503 database unavailable
    code: str | None = None
    message: str | None = None

    @property
    def stored(self) -> bool:
        return self.entry is not None


def store_instance(settings: Settings, data: bytes, *, priority: int | None = None) -> SingleStoreResult:
    """Validate and durably store one instance; refusals are returned, never raised."""
    (result,) = store_batch(settings, [data], priority=priority)
    return result


def store_batch(
    settings: Settings, contents: Sequence[bytes], *, priority: int | None = None
) -> list[SingleStoreResult]:
    """Validate and durably store each instance on its own, in one transaction; one result each.

    Every file is parsed before the transaction opens (``parse_instance``). The valid ones are
    stored in one unit of work with a SAVEPOINT each (``store_parsed``): a refused file changes
    nothing, the others are committed together and only then answered as stored.
    """
    results: list[SingleStoreResult | None] = [None] * len(contents)
    parsed: list[ParsedFile] = []
    for index, data in enumerate(contents):
        item = parse_instance(settings, data, index)
        if isinstance(item, SingleStoreResult):
            results[index] = item
        else:
            parsed.append(item)
    for file, outcome in zip(parsed, store_parsed(settings, parsed, priority=priority), strict=True):
        results[file.index] = outcome
    return [result for result in results if result is not None]


def parse_instance(settings: Settings, data: bytes, index: int) -> ParsedFile | SingleStoreResult:
    """A validated DICOM instance (``index``: its place in the batch), or why it is refused."""
    try:
        meta = parse_file(
            data,
            _NO_RASTER,
            1,
            settings.max_image_pixels,
            active_manifest(settings).scope,
            max_bytes=settings.max_decode_bytes,
        )
    except (SightlineError, ModelLibraryError) as exc:
        return _refusal(exc)
    if meta.source_kind != "dicom":
        return SingleStoreResult(None, 415, "unsupported_media_type", "not a DICOM instance")
    return ParsedFile(index, data, meta)


def store_parsed(
    settings: Settings, parsed: Sequence[ParsedFile], *, priority: int | None = None
) -> list[SingleStoreResult]:
    """Store parsed instances (distinct ``index`` each), each on its own (``store_each``), in
    units of work of at most ``BATCH_INSTANCES``, so that a large request holds its study
    locks for one chunk at a time. If a commit fails (database unavailable) every instance
    of that chunk is refused, with nothing left behind."""
    results: list[SingleStoreResult] = []
    for start in range(0, len(parsed), BATCH_INSTANCES):
        results.extend(_store_chunk(settings, parsed[start : start + BATCH_INSTANCES], priority))
    return results


def _store_chunk(settings: Settings, parsed: Sequence[ParsedFile], priority: int | None) -> list[SingleStoreResult]:
    try:
        with unit_of_work(settings) as db:
            outcomes = store_each(db, BlobStore(settings.storage_dir), parsed, priority=priority, settings=settings)
    except (SightlineError, ModelLibraryError) as exc:
        return [_refusal(exc)] * len(parsed)
    except OperationalError:
        logger.warning("database unavailable; %d instance(s) not stored", len(parsed))
        unavailable = SingleStoreResult(None, 503, "database_unavailable", "the database is unavailable; send it again")
        return [unavailable] * len(parsed)
    return [
        _refusal(outcome) if isinstance(outcome, SightlineError) else SingleStoreResult(outcome.entry, 200)
        for outcome in outcomes
    ]


def _refusal(exc: SightlineError | ModelLibraryError) -> SingleStoreResult:
    if isinstance(exc, SightlineError):
        return SingleStoreResult(None, exc.status_code, exc.code, exc.message)
    return SingleStoreResult(None, model_error_status(exc), exc.code, str(exc))
