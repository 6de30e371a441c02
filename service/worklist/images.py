"""The PNG pictures of an instance: the worker's renderings, or the original rendered now.

The worker stores six PNGs per result (original, heatmap, overlay, contour, and the map and
outline layers of a viewer). Before a
result exists only the original can be shown; it is decoded from the stored file (DICOM
pixels through the Modality and VOI LUTs, PS3.3 C.11) and encoded once, on the first
request, into a file cache under ``<storage_dir>/renderings`` named after the instance's
blob key. Blob keys are content addresses, so a cached rendering is never stale; it is
written to a temporary file and renamed into place, so a reader never sees half of one.
Every later request serves the file without decoding.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.pixels import DEFAULT_MAX_DECODE_BYTES, decode_image
from models.render import encode_png
from service.active_model import ModelKey, latest_result
from service.db.tables import AnalysisResult, Instance
from service.errors import NotFound
from service.storage import BlobStore
from service.worklist.schemas import ImageKind

logger = logging.getLogger(__name__)
RENDERINGS_DIR = "renderings"  # under the blob store's root (settings.storage_dir)


class InstanceNotFound(NotFound):
    code = "instance_not_found"


class ResultNotReady(NotFound):
    code = "result_not_ready"


class ImageMissing(NotFound):
    """The database names a blob whose file is gone from the store (deleted or lost storage)."""

    code = "image_missing"


def instance_png(
    db: Session,
    store: BlobStore,
    sop_uid: str,
    kind: ImageKind,
    *,
    model: ModelKey,
    max_pixels: int,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> bytes:
    """PNG bytes of picture ``kind`` of the instance, from ``model``'s (the active model's)
    latest result when there is one."""
    instance = db.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    if instance is None:
        raise InstanceNotFound("no instance with this SOP Instance UID")
    result = latest_result(db, instance.id, model)
    if result is not None:
        key = _result_key(result, kind)
        if key is None:
            raise ResultNotReady(f"results made before this version have no {kind.value} image")
        return _blob(store, key, instance.id)
    if kind is ImageKind.original:
        return cached_original(store, instance.blob_key, instance.id, max_pixels=max_pixels, max_bytes=max_bytes)
    raise ResultNotReady(f"the {kind.value} image exists once the instance is analysed")


def _blob(store: BlobStore, key: str, instance_id: uuid.UUID) -> bytes:
    try:
        return store.get(key)
    except FileNotFoundError:
        logger.error("stored image file is missing", extra={"instance_id": str(instance_id)})
        raise ImageMissing("the stored file of this image is missing") from None


def _result_key(result: AnalysisResult, kind: ImageKind) -> str | None:
    keys = {
        ImageKind.original: result.original_key,
        ImageKind.heatmap: result.heatmap_key,
        ImageKind.overlay: result.overlay_key,
        ImageKind.contour: result.contour_key,
        ImageKind.map: result.map_key,
        ImageKind.outline: result.outline_key,
    }
    return keys[kind]


def rendering_path(store: BlobStore, blob_key: str) -> Path:
    """Where the rendering of blob ``blob_key`` is cached (the key is a content address, never user input)."""
    return store.root / RENDERINGS_DIR / f"{blob_key}.png"


def cached_original(
    store: BlobStore, blob_key: str, instance_id: uuid.UUID, *, max_pixels: int, max_bytes: int
) -> bytes:
    """The cached rendering of the stored file, rendered and cached first if there is none."""
    path = rendering_path(store, blob_key)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    png = render_png(_blob(store, blob_key, instance_id), max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        _write_atomically(path, png)
    except OSError:  # a full or read-only disk costs a re-render next time, never the answer
        logger.warning("could not cache a rendering", extra={"instance_id": str(instance_id)})
    return png


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_png(data: bytes, *, max_pixels: int, max_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> bytes:
    """Decode a stored DICOM/PNG/JPEG to display pixels and encode them as PNG."""
    return encode_png(decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes).pixels)
