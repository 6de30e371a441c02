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

from models.errors import ModelLibraryError, UnreadableDicom
from models.pixels import DecodedImage, decode_dicom, decode_raster, read_dicom, sniff_kind
from service.errors import SightlineError, UnsupportedMediaType, model_error_status
from service.ingest.dicom_meta import InstanceMeta, RasterContext, from_dicom, from_raster
from service.ingest.errors import EmptyFile, RejectedFile, UploadTooLarge

CHUNK_BYTES = 1024 * 1024
MAX_NAME_CHARS = 120


@dataclass(frozen=True)
class NamedUpload:
    """One part of the multipart body: its position, the client's filename and a readable file."""

    index: int
    filename: str | None
    file: BinaryIO


@dataclass(frozen=True)
class ParsedFile:
    index: int
    filename: str | None
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
                raise UploadTooLarge(
                    f"files[{upload.index}] {display_name(upload.filename)}: "
                    f"the upload exceeds the {max_bytes}-byte limit"
                )
            chunks.append(chunk)
        contents.append(b"".join(chunks))
    return contents


def parse_all(
    uploads: Sequence[NamedUpload], contents: Sequence[bytes], raster: RasterContext, max_pixels: int
) -> list[ParsedFile]:
    """Validate every file; the first bad one refuses the request, named by index and filename."""
    parsed: list[ParsedFile] = []
    for upload, data in zip(uploads, contents, strict=True):
        with refusing(upload.index, upload.filename):
            meta = parse_file(data, raster, upload.index + 1, max_pixels)
        parsed.append(ParsedFile(upload.index, upload.filename, data, meta))
    return parsed


def parse_file(data: bytes, raster: RasterContext, instance_number: int, max_pixels: int) -> InstanceMeta:
    """Sniff by content, decode the pixels (so undecodable files never reach the worker), extract."""
    if not data:
        raise EmptyFile("the file is empty (0 bytes)")
    kind = sniff_kind(data)
    if kind in ("png", "jpeg"):
        return from_raster(decode_raster(data, max_pixels=max_pixels), raster, instance_number)
    try:
        ds = read_dicom(data)  # also accepts a dataset without the PS3.10 preamble
    except UnreadableDicom:
        if kind is None:
            raise UnsupportedMediaType("the content is not DICOM, PNG or JPEG") from None
        raise
    image: DecodedImage = decode_dicom(ds, max_pixels=max_pixels)
    return from_dicom(ds, image)


@contextmanager
def refusing(index: int, filename: str | None) -> Iterator[None]:
    """Re-raise a refusal of file ``index`` as a RejectedFile that keeps its status and code."""
    prefix = f"files[{index}] {display_name(filename)}"
    try:
        yield
    except RejectedFile:
        raise
    except SightlineError as exc:
        raise RejectedFile(f"{prefix}: {exc.message}", status_code=exc.status_code, code=exc.code) from exc
    except ModelLibraryError as exc:
        raise RejectedFile(f"{prefix}: {exc}", status_code=model_error_status(exc), code=exc.code) from exc


def display_name(filename: str | None) -> str:
    """The client's filename, quoted, with control characters replaced and cut to a sane length."""
    if not filename:
        return "(no filename)"
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in filename)[:MAX_NAME_CHARS]
    return repr(cleaned)
