"""PNG and JPEG bytes -> display-ready pixels, with the declared size checked first.

The width, height, bit depth and channels are read from the header (PNG IHDR, ISO/IEC
15948 11.2.2; JPEG SOFn, ITU-T T.81 B.2.2) before any decoding, so a small file that
declares a huge image is refused without allocating it: by pixel count (``max_pixels``)
and by the bytes decoding would take (``max_bytes``, see ``raster_decode_bytes``).
"""

import struct
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from models.decoded_image import DecodedImage
from models.errors import DecompressionBomb, ImageTooLarge, UnreadableRaster
from models.voi import scale_to_uint8

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_DECODE_BYTES = 512 * 1024 * 1024  # the memory one decode may take (SIGHTLINE_MAX_DECODE_BYTES)
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
# PNG colour type (ISO/IEC 15948 11.2.2) -> samples per pixel in the file; palette (3) indexes RGB.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


@dataclass(frozen=True)
class RasterHeader:
    """What a PNG or JPEG header declares: size, bits per sample and samples per pixel."""

    width: int
    height: int
    bits: int
    channels: int


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
    header = png_header(data)
    return header.width, header.height


def png_header(data: bytes) -> RasterHeader:
    """Width, height, bit depth and samples per pixel from IHDR (ISO/IEC 15948 11.2.2)."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise UnreadableRaster("PNG has no IHDR chunk after the signature (corrupt or truncated)")
    width, height = struct.unpack(">II", data[16:24])
    bits, colour_type = data[24], data[25]
    if colour_type not in _PNG_CHANNELS or bits not in (1, 2, 4, 8, 16):
        raise UnreadableRaster(f"PNG IHDR declares colour type {colour_type} with bit depth {bits} (invalid)")
    return RasterHeader(width, height, bits, _PNG_CHANNELS[colour_type])


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOFn (or JPEG-LS SOF55) frame header, walking marker segments from SOI."""
    header = jpeg_header(data)
    return header.width, header.height


def jpeg_header(data: bytes) -> RasterHeader:
    """Size, sample precision P and components Nf of the first SOFn / SOF55 frame header (T.81 B.2.2)."""
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
            precision = data[offset + 4]
            components = data[offset + 9] if offset + 10 <= len(data) else 1
            return RasterHeader(width, height, precision or 8, components or 1)
        offset += 2 + length
    raise UnreadableRaster("JPEG has no frame header before the scan data (corrupt or truncated)")


def raster_decode_bytes(header: RasterHeader) -> int:
    """Peak bytes decoding a raster with this header takes, the uint8 result included.

    OpenCV's decoder peaks at twice its output (every sample the file has, alpha counted
    although it is dropped; 1 or 2 bytes a sample), measured by ``tests/bench/decode_memory.py``;
    after it, the output and the uint8 display (1 or 3 samples; BGR -> RGB is swapped in
    place) are held together. The larger of the two is the peak.
    """
    sample_bytes = 2 if header.bits > 8 else 1
    display_channels = 1 if header.channels <= 2 else 3
    decoded = header.channels * sample_bytes
    return header.width * header.height * max(2 * decoded, decoded + display_channels)


def check_decode_bytes(needed: int, max_bytes: int, what: str) -> None:
    """Raise ImageTooLarge when decoding ``what`` needs more than ``max_bytes``."""
    if needed > max_bytes:
        raise ImageTooLarge(
            f"{what} would need about {needed // 2**20} MiB to decode, over the "
            f"{max_bytes // 2**20} MiB decode budget ({max_bytes} bytes)"
        )


def decode_raster(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_DECODE_BYTES
) -> DecodedImage:
    """Decode a PNG or JPEG (sniffed by magic bytes) with OpenCV.

    16-bit samples are scaled to 8 bit over their full range, alpha is dropped, BGR becomes
    RGB and grayscale stays 2-D. Raises DecompressionBomb before decoding when the header
    declares more than ``max_pixels``, and ImageTooLarge when decoding would take more than
    ``max_bytes`` (``raster_decode_bytes``).
    """
    kind = sniff_kind(data)
    if kind == "png":
        header = png_header(data)
    elif kind == "jpeg":
        header = jpeg_header(data)
    else:
        raise UnreadableRaster("not a PNG or JPEG: unrecognised leading bytes")
    width, height = header.width, header.height
    if width * height > max_pixels:
        raise DecompressionBomb(f"{kind} declares {width}x{height} pixels, over the {max_pixels}-pixel limit")
    check_decode_bytes(raster_decode_bytes(header), max_bytes, f"{kind} of {width}x{height} pixels")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS)
    except cv2.error as exc:
        raise UnreadableRaster(f"{kind} data could not be decoded (corrupt or truncated)") from exc
    if decoded is None:
        raise UnreadableRaster(f"{kind} data could not be decoded (corrupt or truncated)")
    return DecodedImage(_to_display(decoded), kind, 1, 0, None)


def _to_display(decoded: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """uint8 RGB (or grey) with no frame-sized copy beyond the uint8 result: 8-bit data is
    reused as is, and BGR becomes RGB in place."""
    if decoded.ndim == 3 and decoded.shape[2] == 4:  # only with IMREAD_UNCHANGED; kept for safety
        decoded = np.ascontiguousarray(decoded[:, :, :3])
    pixels = scale_to_uint8(decoded, 8 * decoded.dtype.itemsize)
    if pixels.ndim == 3:
        cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)
    return pixels
