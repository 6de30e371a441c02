"""PNG and JPEG bytes -> display-ready pixels, with the declared size checked first.

The width and height are read from the header (PNG IHDR, ISO/IEC 15948 11.2.2; JPEG SOFn,
ITU-T T.81 B.2.2) before any decoding, so a small file that declares a huge image is
refused without allocating it.
"""

import struct
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from models.decoded_image import DecodedImage
from models.errors import DecompressionBomb, UnreadableRaster
from models.voi import scale_to_uint8

DEFAULT_MAX_PIXELS = 64_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
DICOM_PREFIX = b"DICM"
DICOM_PREFIX_OFFSET = 128

# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
# F7 is JPEG-LS SOF55 (ITU-T T.87 C.2.2), same layout, as found in DICOM JPEG-LS frames.
_JPEG_SOF = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}
# Markers with no length field: TEM, RSTn, SOI, EOI (T.81 B.1.1.3).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
_JPEG_SOS = 0xDA
# ANYCOLOR|ANYDEPTH: keep 16-bit depth and grayscale as 2-D, drop alpha, honour EXIF orientation.
_IMREAD_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def sniff_kind(data: bytes) -> Literal["dicom", "png", "jpeg"] | None:
    """Name the format from magic bytes: 'DICM' at offset 128 (PS3.10 7.1), PNG or JPEG signature."""
    if data[DICOM_PREFIX_OFFSET : DICOM_PREFIX_OFFSET + 4] == DICOM_PREFIX:
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    return None


def png_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which PNG requires to come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise UnreadableRaster("PNG has no IHDR chunk after the signature (corrupt or truncated)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOFn (or JPEG-LS SOF55) frame header, walking marker segments from SOI."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise UnreadableRaster(f"JPEG marker expected at byte {offset} (corrupt header)")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker (T.81 B.1.1.2)
            offset += 1
            continue
        if marker in _JPEG_STANDALONE:
            offset += 2
            continue
        if marker == _JPEG_SOS:
            break
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if marker in _JPEG_SOF and offset + 9 <= len(data):
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            if height == 0 or width == 0:
                raise UnreadableRaster("JPEG frame header declares a zero width or height")
            return width, height
        offset += 2 + length
    raise UnreadableRaster("JPEG has no frame header before the scan data (corrupt or truncated)")


def decode_raster(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a PNG or JPEG (sniffed by magic bytes) with OpenCV.

    16-bit samples are scaled to 8 bit over their full range, alpha is dropped, BGR becomes
    RGB and grayscale stays 2-D. Raises DecompressionBomb before decoding when the header
    declares more than ``max_pixels``.
    """
    kind = sniff_kind(data)
    if kind == "png":
        width, height = png_dimensions(data)
    elif kind == "jpeg":
        width, height = jpeg_dimensions(data)
    else:
        raise UnreadableRaster("not a PNG or JPEG: unrecognised leading bytes")
    if width * height > max_pixels:
        raise DecompressionBomb(f"{kind} declares {width}x{height} pixels, over the {max_pixels}-pixel limit")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS)
    except cv2.error as exc:
        raise UnreadableRaster(f"{kind} data could not be decoded (corrupt or truncated)") from exc
    if decoded is None:
        raise UnreadableRaster(f"{kind} data could not be decoded (corrupt or truncated)")
    return DecodedImage(_to_display(decoded), kind, 1, 0, None)


def _to_display(decoded: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    bits = 8 * decoded.dtype.itemsize
    pixels = scale_to_uint8(decoded, bits)
    if pixels.ndim == 3:
        pixels = pixels[:, :, 2::-1]  # BGR or BGRA -> RGB, alpha dropped
    return np.ascontiguousarray(pixels)
