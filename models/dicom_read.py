"""DICOM Part 10 bytes (PS3.10) -> a pydicom Dataset, or UnreadableDicom and nothing else."""

import struct
import zlib
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from models.errors import DecompressionBomb, UnreadableDicom

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFAULT_MAX_INFLATED_BYTES = 256 << 20  # a deflated dataset may not inflate past 256 MiB (one study slice is far less)
DICOM_PREFIX = b"DICM"

# What pydicom's parser raises on malformed bytes (it has no single base exception);
# found by the damaged-file tests: OSError "No tag to read", zlib.error from deflate.
_PARSE_ERRORS = (
    InvalidDicomError, BytesLengthException, EOFError, OSError, struct.error, zlib.error, ValueError,
    KeyError, IndexError, TypeError, OverflowError, NotImplementedError, AttributeError,
)  # fmt: skip


def read_dicom(data: bytes, *, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> Dataset:
    """Parse DICOM bytes; files without preamble/meta are accepted only if they hold a SOP Instance UID.

    Every element is converted here, so later attribute access cannot fail on malformed
    values. The transfer syntax of a file without one is inferred from how it parsed.
    A Deflated Explicit VR Little Endian dataset (PS3.5 A.5) that inflates past
    ``max_inflated_bytes`` raises DecompressionBomb.
    """
    if not data:
        raise UnreadableDicom("empty input: 0 bytes is not a DICOM file")
    try:
        ds = _parse(data, max_inflated_bytes)
        _check_complete(ds)
        for _ in ds.iterall():
            pass
    except _PARSE_ERRORS as exc:
        raise UnreadableDicom(f"not a readable DICOM file ({type(exc).__name__} while parsing)") from exc
    _ensure_transfer_syntax(ds)
    return ds


def _parse(data: bytes, max_inflated_bytes: int) -> Dataset:
    inflated = _inflate_dataset(data, max_inflated_bytes)
    if inflated is not None:  # now a well-formed Explicit VR Little Endian file
        ds = dcmread(BytesIO(inflated))
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.buffer = None  # nothing is deferred: let the inflated copy go once the elements are read out of it
        return ds
    try:
        return dcmread(BytesIO(data))
    except InvalidDicomError:
        ds = dcmread(BytesIO(data), force=True)
    if "SOPInstanceUID" not in ds:
        raise UnreadableDicom("no 'DICM' prefix and no (0008,0018) SOP Instance UID: not a DICOM dataset")
    return ds


def _inflate_dataset(data: bytes, max_bytes: int) -> bytes | None:
    """PS3.5 A.5: the whole dataset after the File Meta Information is raw deflate.

    pydicom inflates it with no bound; here it is inflated up to ``max_bytes`` and
    rewritten as an Explicit VR Little Endian file. None when the file is not deflated.
    The inflated body is copied once, into the rewritten file; the deflated input not at all.
    """
    fp = BytesIO(data)
    preamble = read_preamble(fp, force=True)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    body = _bounded_inflate(memoryview(data)[fp.tell() :], max_bytes)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write((preamble or bytes(128)) + DICOM_PREFIX)
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue() + body


def _bounded_inflate(deflated: memoryview, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(deflated, max_bytes + 1)
    if len(inflated) > max_bytes:
        raise DecompressionBomb(f"deflated dataset inflates past the {max_bytes}-byte limit")
    if not inflater.eof:
        raise UnreadableDicom("deflated dataset is truncated: the deflate stream does not end")
    return inflated


def _check_complete(ds: Dataset) -> None:
    """pydicom stops quietly at end of input; a short last element means the file was cut.

    Short Pixel Data is left to ``decode_dicom``, which reports it as inconsistent pixel data.
    """
    tags = list(ds.keys())
    if not tags:
        raise UnreadableDicom("no data elements after the File Meta Information (empty or truncated)")
    last = ds.get_item(tags[-1])
    if not isinstance(last, RawDataElement) or last.tag == PIXEL_DATA_TAG or last.length == UNDEFINED_LENGTH:
        return
    present = len(last.value) if isinstance(last.value, bytes) else last.length
    if present < last.length:
        raise UnreadableDicom(f"truncated: element {last.tag} declares {last.length} bytes, {present} present")


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Fill in (0002,0010) from the encoding the parser found, when the file has none."""
    if ds.file_meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit and little:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif implicit is False:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
