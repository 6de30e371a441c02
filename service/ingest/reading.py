"""Read the uploaded files within the size limit and turn each into validated metadata.

Nothing here touches the database or the blob store: every file of a request is read,
sniffed by content (PS3.10 §7.1 'DICM' prefix, PNG or JPEG signature) and decoded before
anything is written, so one bad file refuses the request with nothing to undo.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from models.applicability import dicom_attributes, not_applicable_reason, raster_attributes
from models.errors import ModelLibraryError, UnreadableDicom
from models.manifest import Scope
from models.pixels import DEFAULT_MAX_DECODE_BYTES, DecodedImage, decode_dicom, decode_raster, read_dicom, sniff_kind
from service.errors import SightlineError, UnsupportedMediaType, model_error_status
from service.ingest.dicom_meta import InstanceMeta, RasterContext, from_dicom, from_raster
from service.ingest.errors import EmptyFile, RejectedFile, UploadTooLarge

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class NamedUpload:
    """One part of the multipart body: its position and a readable file.

    The client's filename is deliberately not kept: PACS name files after patients and MRNs,
    and every message names a file by its index only.
    """

    index: int
    file: BinaryIO


@dataclass(frozen=True)
class ParsedFile:
    index: int
    data: bytes
    meta: InstanceMeta


def read_all(uploads: Sequence[NamedUpload], max_bytes: int) -> list[bytes]:
    """Read every file in chunks, refusing once the request's files together pass ``max_bytes``.

    The route already bounds the raw body; counting here too keeps the bound whatever
    spooled the parts (a client can send no Content-Length, or a false one, and chunk).
    """
    total = 0
    contents: list[bytes] = []
    for upload in uploads:
        chunks: list[bytes] = []
        while chunk := upload.file.read(CHUNK_BYTES):
            total += len(chunk)
            if total > max_bytes:
                raise UploadTooLarge(f"files[{upload.index}]: the upload exceeds the {max_bytes}-byte limit")
            chunks.append(chunk)
        contents.append(b"".join(chunks))
    return contents


def parse_all(
    uploads: Sequence[NamedUpload],
    contents: Sequence[bytes],
    raster: RasterContext,
    max_pixels: int,
    scope: Scope,
    *,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> list[ParsedFile]:
    """Validate every file; the first bad one refuses the request, named by its index.

    Files are decoded one after another and each decoded image is dropped before the next,
    so a request's decode memory is bounded by ``max_bytes`` (one file's budget)."""
    parsed: list[ParsedFile] = []
    for upload, data in zip(uploads, contents, strict=True):
        with refusing(upload.index):
            meta = parse_file(data, raster, upload.index + 1, max_pixels, scope, max_bytes=max_bytes)
        parsed.append(ParsedFile(upload.index, data, meta))
    return parsed


def parse_file(
    data: bytes,
    raster: RasterContext,
    instance_number: int,
    max_pixels: int,
    scope: Scope,
    *,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> InstanceMeta:
    """Sniff by content, decode the pixels once (so undecodable files never reach the worker),
    judge applicability against the model's ``scope``, extract. Objects without pixels
    (SR, KOS, presentation states) are accepted and stored as not applicable. An image whose
    headers say decoding would take more than ``max_bytes`` is refused before decoding
    (413 ``image_too_large``)."""
    if not data:
        raise EmptyFile("the file is empty (0 bytes)")
    kind = sniff_kind(data)
    if kind in ("png", "jpeg"):
        image = decode_raster(data, max_pixels=max_pixels, max_bytes=max_bytes)
        attrs = raster_attributes(image.pixels.shape[0], image.pixels.shape[1], color=image.is_color)
        reason = not_applicable_reason(attrs, scope)
        return from_raster(image, raster, instance_number, data=data, reason=reason)
    try:
        ds = read_dicom(data)  # also accepts a dataset without the PS3.10 preamble
    except UnreadableDicom:
        if kind is None:
            raise UnsupportedMediaType("the content is not DICOM, PNG or JPEG") from None
        raise
    attrs = dicom_attributes(ds)
    pixels: DecodedImage | None = (
        decode_dicom(ds, max_pixels=max_pixels, max_bytes=max_bytes) if attrs.has_pixels else None
    )
    return from_dicom(ds, pixels, data=data, reason=not_applicable_reason(attrs, scope))


@contextmanager
def refusing(index: int) -> Iterator[None]:
    """Re-raise a refusal of file ``index`` as a RejectedFile that keeps its status and code.

    The message names the file by index only, never by the client's filename (patient data).
    """
    prefix = f"files[{index}]"
    try:
        yield
    except RejectedFile:
        raise
    except SightlineError as exc:
        raise RejectedFile(f"{prefix}: {exc.message}", status_code=exc.status_code, code=exc.code) from exc
    except ModelLibraryError as exc:
        raise RejectedFile(f"{prefix}: {exc}", status_code=model_error_status(exc), code=exc.code) from exc
