"""The PNG pictures of an instance: the worker's renderings, or the original rendered now.

The worker stores six PNGs per result (original, heatmap, overlay, contour, and the map and
outline layers of a viewer). Before a
result exists only the original can be shown; it is decoded from the stored file (DICOM
pixels through the Modality and VOI LUTs, PS3.3 C.11) and encoded here.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.pixels import decode_image
from models.render import encode_png
from service.db.tables import AnalysisResult, Instance
from service.errors import NotFound
from service.storage import BlobStore
from service.worklist.schemas import ImageKind

logger = logging.getLogger(__name__)


class InstanceNotFound(NotFound):
    code = "instance_not_found"


class ResultNotReady(NotFound):
    code = "result_not_ready"


class ImageMissing(NotFound):
    """The database names a blob whose file is gone from the store (deleted or lost storage)."""

    code = "image_missing"


def instance_png(db: Session, store: BlobStore, sop_uid: str, kind: ImageKind, *, max_pixels: int) -> bytes:
    """PNG bytes of picture ``kind`` of the instance, from its latest result when there is one."""
    instance = db.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    if instance is None:
        raise InstanceNotFound("no instance with this SOP Instance UID")
    result = db.scalar(
        select(AnalysisResult)
        .where(AnalysisResult.instance_id == instance.id)
        .order_by(AnalysisResult.created_at.desc(), AnalysisResult.id.desc())
        .limit(1)
    )
    if result is not None:
        key = _result_key(result, kind)
        if key is None:
            raise ResultNotReady(f"results made before this version have no {kind.value} image")
        return _blob(store, key, instance.id)
    if kind is ImageKind.original:
        return render_png(_blob(store, instance.blob_key, instance.id), max_pixels=max_pixels)
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


def render_png(data: bytes, *, max_pixels: int) -> bytes:
    """Decode a stored DICOM/PNG/JPEG to display pixels and encode them as PNG."""
    return encode_png(decode_image(data, max_pixels=max_pixels).pixels)
