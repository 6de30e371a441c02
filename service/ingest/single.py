"""Store one DICOM instance on its own, for the DICOM protocols (C-STORE, STOW-RS).

The upload API is all or nothing per request; a C-STORE association or a STOW-RS request
is not: every instance succeeds or fails by itself (PS3.4 B.2.3, PS3.18 10.5.3). So each
instance here is its own unit of work (blob, rows, job, commit, publish), and every
refusal becomes a ``SingleStoreResult`` carrying the HTTP-style status and error code
that the caller maps to a DIMSE status or a STOW Failure Reason. Nothing is half-stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from models.errors import ModelLibraryError
from service.active_model import active_manifest
from service.db.session import unit_of_work
from service.errors import SightlineError, model_error_status
from service.ingest.dicom_meta import RasterContext
from service.ingest.reading import ParsedFile, parse_file
from service.ingest.schemas import UploadedInstance
from service.ingest.service import store_files
from service.settings import Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)
_NO_RASTER = RasterContext("", "", "")  # DICOM protocols carry their own UIDs


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
    try:
        meta = parse_file(data, _NO_RASTER, 1, settings.max_image_pixels, active_manifest(settings).scope)
        if meta.source_kind != "dicom":
            return SingleStoreResult(None, 415, "unsupported_media_type", "not a DICOM instance")
        with unit_of_work(settings) as db:
            (stored,) = store_files(
                db, BlobStore(settings.storage_dir), [ParsedFile(0, data, meta)], priority=priority, settings=settings
            )
    except SightlineError as exc:
        return SingleStoreResult(None, exc.status_code, exc.code, exc.message)
    except ModelLibraryError as exc:
        return SingleStoreResult(None, model_error_status(exc), exc.code, str(exc))
    except OperationalError:
        logger.warning("database unavailable; instance not stored")
        return SingleStoreResult(None, 503, "database_unavailable", "the database is unavailable; send it again")
    return SingleStoreResult(stored.entry, 200)
