"""WADO-RS, the Retrieve Transaction (PS3.18 §10.4): instances, metadata, frames and rendered images.

Instances go out as stored, byte for byte, one part per object, each file read only while
its part is sent. Frames are raw uncompressed pixels (PS3.18 §8.7.3.3.2) unless the Accept
header names ``transfer-syntax=*``, which returns encapsulated frames as stored. Rendered
images use the same Modality/VOI LUT pipeline as the worklist pictures (``models``).
Accept values are honoured in the order given; quality values are not weighed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import cv2
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, RLELossless
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.dicom_pixels import decode_dicom
from models.dicom_read import read_dicom
from models.render import encode_png
from service.db.tables import Study
from service.deps import AppSettings, DbSession, Reader, Store
from service.dicomweb.dicom_json import ObjectMissing, metadata_json, read_header
from service.dicomweb.multipart import DICOM_MEDIA_TYPE
from service.dicomweb.query import UID_PATTERN, dicom_objects
from service.dicomweb.stow import DICOM_JSON, NotAcceptable
from service.errors import BadRequest, Forbidden, NotFound, Unauthenticated, UnprocessableInput, error_responses
from service.settings import Settings
from service.storage import BlobStore

router = APIRouter(tags=["dicomweb"])
Uid = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]
OCTET_STREAM = "application/octet-stream"
# PS3.18 Table 8.7.3-2: media types of encapsulated (compressed) frames by transfer syntax.
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class DicomObjectNotFound(NotFound):
    code = "dicom_object_not_found"


class FrameNotFound(NotFound):
    code = "frame_not_found"


class InvalidFrameList(BadRequest):
    code = "invalid_frame_list"


_RESPONSES: dict[int | str, dict[str, Any]] = error_responses(
    InvalidFrameList, Unauthenticated, Forbidden, DicomObjectNotFound, NotAcceptable, UnprocessableInput
)
_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


@router.get("/studies/{study}", response_class=Response, responses=_RESPONSES, summary="WADO-RS: a study")
def retrieve_study(request: Request, db: DbSession, store: Store, _: Reader, study: Uid) -> Response:
    """Every DICOM object of the study as ``multipart/related; type="application/dicom"``."""
    return _retrieve(request, store, _objects(db, study))


@router.get("/studies/{study}/series/{series}", response_class=Response, responses=_RESPONSES)
def retrieve_series(request: Request, db: DbSession, store: Store, _: Reader, study: Uid, series: Uid) -> Response:
    return _retrieve(request, store, _objects(db, study, series))


@router.get(_INSTANCE, response_class=Response, responses=_RESPONSES)
def retrieve_instance(
    request: Request, db: DbSession, store: Store, _: Reader, study: Uid, series: Uid, instance: Uid
) -> Response:
    return _retrieve(request, store, _objects(db, study, series, instance))


@router.get("/studies/{study}/metadata", response_class=Response, responses=_RESPONSES)
def study_metadata(request: Request, db: DbSession, store: Store, _: Reader, study: Uid) -> Response:
    """Every instance header as DICOM JSON; pixel data as a BulkDataURI to its frames."""
    return _metadata(request, store, _objects(db, study), study)


@router.get("/studies/{study}/series/{series}/metadata", response_class=Response, responses=_RESPONSES)
def series_metadata(request: Request, db: DbSession, store: Store, _: Reader, study: Uid, series: Uid) -> Response:
    return _metadata(request, store, _objects(db, study, series), study)


@router.get(_INSTANCE + "/metadata", response_class=Response, responses=_RESPONSES)
def instance_metadata(
    request: Request, db: DbSession, store: Store, _: Reader, study: Uid, series: Uid, instance: Uid
) -> Response:
    return _metadata(request, store, _objects(db, study, series, instance), study)


@router.get(_INSTANCE + "/frames/{frames}", response_class=Response, responses=_RESPONSES)
def retrieve_frames(
    request: Request, db: DbSession, store: Store, _: Reader, study: Uid, series: Uid, instance: Uid, frames: str
) -> Response:
    """Frames (1-based, comma separated) as ``multipart/related; type="application/octet-stream"``."""
    numbers = _frame_numbers(frames)
    ds = _dataset(store, _objects(db, study, series, instance)[0].blob_key)
    count = _frame_count(ds)
    if any(number > count for number in numbers):
        raise FrameNotFound(f"the instance has {count} frame(s)")
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    accept = _accept_items(request.headers.get("accept"))
    if syntax.is_encapsulated and any(params.get("transfer-syntax") == "*" for _, params in accept):
        stored = list(generate_frames(ds.PixelData, number_of_frames=count))
        media = f"{_FRAME_MEDIA.get(syntax, OCTET_STREAM)}; transfer-syntax={syntax}"
        return _multipart([(media, stored[n - 1]) for n in numbers], media.split(";")[0])
    if not any(_accepts(media, params, "multipart/related", OCTET_STREAM) for media, params in accept):
        raise NotAcceptable('frames are available as multipart/related; type="application/octet-stream"')
    return _multipart([(OCTET_STREAM, _raw_frame(ds, n - 1)) for n in numbers], OCTET_STREAM)


@router.get(_INSTANCE + "/rendered", response_class=Response, responses=_RESPONSES)
def render_instance(
    request: Request,
    db: DbSession,
    store: Store,
    settings: AppSettings,
    _: Reader,
    study: Uid,
    series: Uid,
    instance: Uid,
) -> Response:
    """The first frame as a display image (Modality LUT, then VOI LUT: PS3.18 §8.3.5.1)."""
    return _rendered(request, store, _objects(db, study, series, instance)[0].blob_key, 1, settings)


@router.get(_INSTANCE + "/frames/{frame}/rendered", response_class=Response, responses=_RESPONSES)
def render_frame(
    request: Request,
    db: DbSession,
    store: Store,
    settings: AppSettings,
    _: Reader,
    study: Uid,
    series: Uid,
    instance: Uid,
    frame: Annotated[int, Path(ge=1)],
) -> Response:
    return _rendered(request, store, _objects(db, study, series, instance)[0].blob_key, frame, settings)


def _objects(db: Session, study: str, series: str | None = None, instance: str | None = None) -> Sequence[Any]:
    objects = dicom_objects()
    statement = (
        select(objects.c.sop_uid, objects.c.series_uid, objects.c.blob_key)
        .join(Study, Study.id == objects.c.study_id)
        .where(Study.study_instance_uid == study)
        .order_by(objects.c.series_uid, objects.c.instance_number, objects.c.sop_uid)
    )
    if series is not None:
        statement = statement.where(objects.c.series_uid == series)
    if instance is not None:
        statement = statement.where(objects.c.sop_uid == instance)
    rows = db.execute(statement).all()
    if not rows:
        raise DicomObjectNotFound("no DICOM object matches these UIDs")
    return rows


def _retrieve(request: Request, store: BlobStore, rows: Sequence[Any]) -> Response:
    accept = _accept_items(request.headers.get("accept"))
    if not any(_accepts(media, params, "multipart/related", DICOM_MEDIA_TYPE) for media, params in accept):
        raise NotAcceptable('instances are available as multipart/related; type="application/dicom"')
    paths = [store.path_for(row.blob_key) for row in rows]
    if not all(path.exists() for path in paths):
        raise ObjectMissing("the stored file of an object is missing")
    boundary = uuid.uuid4().hex

    def parts() -> Iterator[bytes]:
        for path in paths:
            yield f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode()
            yield path.read_bytes()
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media_type = f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}'
    return StreamingResponse(parts(), media_type=media_type)


def _metadata(request: Request, store: BlobStore, rows: Sequence[Any], study: str) -> Response:
    def frames_url(row: Any) -> str:
        names = {"study": study, "series": row.series_uid, "instance": row.sop_uid}
        return request.url_for("retrieve_instance", **names).path + "/frames"

    body = [metadata_json(read_header(store.path_for(row.blob_key)), frames_url(row)) for row in rows]
    return Response(json.dumps(body), media_type=DICOM_JSON)


def _multipart(parts: list[tuple[str, bytes]], root_type: str) -> Response:
    boundary = uuid.uuid4().hex
    chunks = [f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + data + b"\r\n" for media, data in parts]
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return Response(body, media_type=f'multipart/related; type="{root_type}"; boundary={boundary}')


def _accept_items(accept: str | None) -> list[tuple[str, dict[str, str]]]:
    """``(media type, parameters)`` per Accept item; no header accepts anything."""
    items = []
    for item in (accept or "*/*").split(","):
        media, *params = item.split(";")
        pairs = (param.partition("=") for param in params)
        items.append((media.strip().lower(), {k.strip().lower(): v.strip().strip('"') for k, _, v in pairs}))
    return items


def _accepts(media: str, params: dict[str, str], wanted: str, root: str) -> bool:
    if media == "*/*":
        return True
    return media == wanted and params.get("type", root).lower() == root


def _frame_numbers(frames: str) -> list[int]:
    parts = [part.strip() for part in frames.split(",")]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise InvalidFrameList("frames must be a comma-separated list of 1-based frame numbers")
    return [int(part) for part in parts]


def _dataset(store: BlobStore, blob_key: str) -> Dataset:
    try:
        return dcmread(store.path_for(blob_key))
    except FileNotFoundError:
        raise ObjectMissing("the stored file of this object is missing") from None


def _frame_count(ds: Dataset) -> int:
    if "PixelData" not in ds:
        raise FrameNotFound("the object has no pixel data")
    return int(ds.get("NumberOfFrames") or 1)


def _raw_frame(ds: Dataset, index: int) -> bytes:
    """Native little-endian frames are sliced as stored; anything else is decoded by pydicom."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    bits = int(ds.BitsAllocated)
    if not syntax.is_encapsulated and syntax.is_little_endian and bits % 8 == 0:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        return bytes(ds.PixelData[index * size : (index + 1) * size])
    plugin = "pydicom" if syntax == RLELossless else ""
    return bytes(pixel_array(ds, index=index, decoding_plugin=plugin).tobytes())


def _rendered(request: Request, store: BlobStore, blob_key: str, frame: int, settings: Settings) -> Response:
    media = _rendered_type(request.headers.get("accept"))
    try:
        ds = read_dicom(store.path_for(blob_key).read_bytes())
    except FileNotFoundError:
        raise ObjectMissing("the stored file of this object is missing") from None
    if frame > _frame_count(ds):
        raise FrameNotFound(f"the instance has {_frame_count(ds)} frame(s)")
    limit = settings.max_decode_bytes
    pixels = decode_dicom(ds, index=frame - 1, max_pixels=settings.max_image_pixels, max_bytes=limit).pixels
    if media == "image/png":
        return Response(encode_png(pixels), media_type=media)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels)
    if not ok:
        raise UnprocessableInput("the frame could not be encoded as JPEG")
    return Response(bytes(encoded.tobytes()), media_type=media)


def _rendered_type(accept: str | None) -> str:
    for media, _ in _accept_items(accept):
        if media in ("image/png", "image/*", "*/*"):
            return "image/png"
        if media == "image/jpeg":
            return media
    raise NotAcceptable("rendered images are available as image/png or image/jpeg")
