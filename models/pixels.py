"""Pixel decoding for the model library: DICOM, PNG and JPEG to display-ready uint8.

This is the one import the worker needs; the pieces live in ``dicom_read`` (PS3.10),
``dicom_pixels`` (PS3.3 C.7.6.3 / C.11), ``raster`` (PNG/JPEG with a header size check)
and ``voi`` (windowing).
"""

from models.decoded_image import DecodedImage, ImageSource, Window
from models.dicom_pixels import DEFAULT_MAX_PIXELS, decode_dicom
from models.dicom_read import read_dicom
from models.errors import UnreadableDicom
from models.manifest import InputPolicy
from models.raster import DEFAULT_MAX_DECODE_BYTES, decode_raster, sniff_kind

__all__ = [
    "DEFAULT_MAX_DECODE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageSource",
    "Window",
    "decode_dicom",
    "decode_image",
    "decode_raster",
    "read_dicom",
    "sniff_kind",
]


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    input_policy: InputPolicy | None = None,
) -> DecodedImage:
    """Sniff and decode any supported upload; bytes with no known magic are tried as a
    preamble-less DICOM dataset (accepted only with a SOP Instance UID). Refused before
    decoding past ``max_pixels`` or past ``max_bytes`` of decode memory (ImageTooLarge).
    ``input_policy`` makes a DICOM's ``model_pixels`` as the worker does (else they are the display's)."""
    kind = sniff_kind(data)
    if kind in ("png", "jpeg"):
        return decode_raster(data, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        return decode_dicom(read_dicom(data), max_pixels=max_pixels, max_bytes=max_bytes, input_policy=input_policy)
    except UnreadableDicom:
        if kind is None:
            raise UnreadableDicom("not DICOM, PNG or JPEG: unrecognised bytes") from None
        raise
