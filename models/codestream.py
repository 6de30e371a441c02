"""The frame size a compressed DICOM frame declares in its own codestream header.

An encapsulated frame (PS3.5 A.4) is decoded by a JPEG, JPEG-LS or JPEG 2000 library
that allocates what the codestream header says, not what (0028,0010) Rows and
(0028,0011) Columns say. So the header is read first: JPEG SOFn (ITU-T T.81 B.2.2),
JPEG-LS SOF55 (ITU-T T.87 C.2.2), JPEG 2000 SIZ (ITU-T T.800 A.5.1), bare or inside a
JP2 'jp2c' box (T.800 I.5.4). RLE (PS3.5 G) needs no check: its output size is fixed
by Rows and Columns.
"""

import struct

from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID, RLELossless

from models.errors import DecompressionBomb, InconsistentPixelData, UnreadableRaster
from models.raster import JPEG_SOI, jpeg_dimensions

J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_SIZ_FIELDS = struct.Struct(">IIII")  # Xsiz, Ysiz, XOsiz, YOsiz after Lsiz and Rsiz
_SIZ_OFFSET = 8  # SOC (2) + SIZ marker (2) + Lsiz (2) + Rsiz (2)
_BOX_HEADER = struct.Struct(">I4s")
# Malformed encapsulation: what pydicom.encaps raises on a bad item tag or offset table.
_ENCAPS_ERRORS = (ValueError, KeyError, IndexError, TypeError, EOFError, struct.error)


def check_encapsulated_frame(ds: Dataset, index: int, *, rows: int, columns: int, frames: int, max_pixels: int) -> None:
    """Refuse frame ``index`` of ``ds`` when its codestream declares a bomb or another size.

    Raises DecompressionBomb when width x height exceeds ``max_pixels``, and
    InconsistentPixelData when it differs from Rows x Columns or has no readable header.
    """
    if UID(ds.file_meta.TransferSyntaxUID) == RLELossless:
        return
    width, height = codestream_dimensions(_encoded_frame(ds, index, frames))
    if width * height > max_pixels:
        raise DecompressionBomb(f"compressed frame declares {width}x{height} pixels, over the {max_pixels}-pixel limit")
    if (width, height) != (columns, rows):
        raise InconsistentPixelData(
            f"compressed frame declares {width}x{height} pixels but Columns x Rows is {columns}x{rows}"
        )


def _encoded_frame(ds: Dataset, index: int, frames: int) -> bytes:
    """The encoded bytes of frame ``index``, located as pydicom's decoder locates them."""
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return get_frame(ds.PixelData, index, number_of_frames=frames, extended_offsets=offsets)
    except _ENCAPS_ERRORS as exc:
        raise InconsistentPixelData(f"encapsulated frame {index} cannot be located: {_one_line(exc)}") from exc


def codestream_dimensions(frame: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG/JPEG-LS, JPEG 2000 codestream or JP2 file header."""
    if frame.startswith(JPEG_SOI):
        try:
            return jpeg_dimensions(frame)
        except UnreadableRaster as exc:
            raise InconsistentPixelData(f"compressed frame: {exc}") from exc
    if frame.startswith(J2K_SOC_SIZ):
        return _siz_dimensions(frame)
    if frame.startswith(JP2_SIGNATURE):
        return _siz_dimensions(_jp2_codestream(frame))
    raise InconsistentPixelData("compressed frame starts with no JPEG, JPEG 2000 or JP2 header")


def _siz_dimensions(codestream: bytes) -> tuple[int, int]:
    """T.800 A.5.1: the reference grid is Xsiz x Ysiz, the image starts at (XOsiz, YOsiz)."""
    if not codestream.startswith(J2K_SOC_SIZ) or len(codestream) < _SIZ_OFFSET + _SIZ_FIELDS.size:
        raise InconsistentPixelData("JPEG 2000 codestream has no complete SIZ marker after SOC")
    xsiz, ysiz, xosiz, yosiz = _SIZ_FIELDS.unpack_from(codestream, _SIZ_OFFSET)
    if xosiz >= xsiz or yosiz >= ysiz:
        raise InconsistentPixelData("JPEG 2000 SIZ marker declares an empty image area")
    return xsiz - xosiz, ysiz - yosiz


def _jp2_codestream(data: bytes) -> bytes:
    """The contents of the first top-level 'jp2c' box (T.800 I.4: LBox, TBox, XLBox)."""
    offset = 0
    while offset + _BOX_HEADER.size <= len(data):
        length, kind = _BOX_HEADER.unpack_from(data, offset)
        header = _BOX_HEADER.size
        if length == 1 and offset + 16 <= len(data):
            (length,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        if kind == b"jp2c":
            return data[offset + header : offset + length if length else len(data)]
        if length < header:
            break
        offset += length
    raise InconsistentPixelData("JP2 file has no contiguous codestream ('jp2c') box")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
