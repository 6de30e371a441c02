"""DICOM Part 10 bytes (PS3.10) -> a pydicom Dataset, or UnreadableDicom and nothing else."""

import struct
import zlib
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from models.errors import UnreadableDicom

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF

# What pydicom's parser raises on malformed bytes (it has no single base exception);
# found by the damaged-file tests: OSError "No tag to read", zlib.error from deflate.
_PARSE_ERRORS = (
    InvalidDicomError, BytesLengthException, EOFError, OSError, struct.error, zlib.error, ValueError,
    KeyError, IndexError, TypeError, OverflowError, NotImplementedError, AttributeError,
)  # fmt: skip


def read_dicom(data: bytes) -> Dataset:
    """Parse DICOM bytes; files without preamble/meta are accepted only if they hold a SOP Instance UID.

    Every element is converted here, so later attribute access cannot fail on malformed
    values. The transfer syntax of a file without one is inferred from how it parsed.
    """
    if not data:
        raise UnreadableDicom("empty input: 0 bytes is not a DICOM file")
    try:
        ds = _parse(data)
        _check_complete(ds)
        for _ in ds.iterall():
            pass
    except _PARSE_ERRORS as exc:
        raise UnreadableDicom(f"not a readable DICOM file ({type(exc).__name__} while parsing)") from exc
    _ensure_transfer_syntax(ds)
    return ds


def _parse(data: bytes) -> Dataset:
    try:
        return dcmread(BytesIO(data))
    except InvalidDicomError:
        ds = dcmread(BytesIO(data), force=True)
    if "SOPInstanceUID" not in ds:
        raise UnreadableDicom("no 'DICM' prefix and no (0008,0018) SOP Instance UID: not a DICOM dataset")
    return ds


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
