"""A parsed DICOM dataset -> display-ready pixels of one frame.

The Image Pixel module (PS3.3 C.7.6.3) is validated against the pixel data before
anything is decoded; grayscale frames then pass through the Modality LUT (C.11.1) and the
VOI LUT (C.11.2) to 8-bit; colour frames are converted to RGB (C.7.6.3.1.2) and scaled.
"""

import logging
import struct
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, RLELossless

from models.codestream import check_encapsulated_frame
from models.decoded_image import DecodedImage, Window
from models.dicom_voi import grayscale_display, modality_values
from models.errors import (
    DecompressionBomb,
    InconsistentPixelData,
    NoPixelData,
    UnsupportedTransferSyntax,
)
from models.manifest import InputPolicy
from models.model_input import grey_model_picture
from models.raster import DEFAULT_MAX_DECODE_BYTES, check_decode_bytes
from models.voi import scale_to_uint8

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")
PALETTE = "PALETTE COLOR"

# What pydicom's pixel decoders raise: validation (Value/Attribute/TypeError), all plugins
# failed (RuntimeError), malformed encapsulation (struct.error, EOFError); no decoder for
# the syntax (NotImplementedError) is handled separately.
_DECODE_ERRORS = (ValueError, AttributeError, TypeError, RuntimeError, KeyError, IndexError, EOFError, struct.error)
# pylibjpeg-rle panics (a BaseException) on malformed segments; pydicom's own RLE decoder raises.
_PLUGIN_FOR = {RLELossless: "pydicom"}
# Working bytes per sample besides the decoder's output (see ``dicom_decode_bytes``).
_GREY_WORKING_BYTES = 4 + 1  # float32 modality values + uint8 display
_YBR_WORKING_BYTES = 8  # pydicom converts YBR to RGB through a float64 copy


@dataclass(frozen=True)
class _Geometry:
    """The Image Pixel module attributes that fix the size of the pixel data."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    frames: int
    photometric: str


def decode_dicom(
    ds: Dataset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    index: int | None = None,
    input_policy: InputPolicy | None = None,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> DecodedImage:
    """Decode frame ``index`` of ``ds`` to display-ready uint8 pixels.

    ``index`` None is the middle frame (frame_count // 2): the picture shown before
    analysis. The worker decodes every frame, and with ``input_policy`` also makes the
    model's input picture from the modality values (``models.model_input``).

    Grayscale (MONOCHROME1/2, PS3.3 C.7.6.3.1.2): Modality LUT (C.11.1), then the file's
    first Window Center/Width with its VOI LUT Function (C.11.2.1.2-3), else its VOI LUT
    Sequence, else a 0.5-99.5 percentile window; functional groups of an enhanced object
    come first (see ``dicom_voi``). MONOCHROME1 is inverted after the VOI LUT so that high
    is bright.
    Colour (RGB, YBR_*) is converted to RGB by the decoder and scaled, never windowed;
    PALETTE COLOR goes through its lookup tables (C.7.6.3.1.5).

    Refused before any pixel is decoded: more than ``max_pixels`` a frame
    (DecompressionBomb), or more than ``max_bytes`` of memory to decode one frame
    (ImageTooLarge, ``dicom_decode_bytes``).
    """
    geometry = _geometry(ds, max_pixels)
    needed = dicom_decode_bytes(ds)
    what = f"a {geometry.rows}x{geometry.columns}x{geometry.samples_per_pixel} frame of {geometry.bits_allocated} bits"
    check_decode_bytes(needed, max_bytes, what)
    index = geometry.frames // 2 if index is None else index
    if not 0 <= index < geometry.frames:
        raise InconsistentPixelData(f"frame {index} is outside the {geometry.frames} frame(s) of the object")
    _check_pixel_data(ds, geometry, index, max_pixels)
    frame = _decode_frame(ds, index)
    if geometry.photometric == PALETTE:
        return _image(_palette_to_rgb(frame, ds), geometry, index, None)
    if geometry.photometric in COLOR:
        return _image(scale_to_uint8(frame, _bits_stored(ds, geometry)), geometry, index, None)
    values = modality_values(frame, ds, index) if input_policy is not None else None
    display, window = grayscale_display(frame, ds, index, values)
    inverted = geometry.photometric == "MONOCHROME1"
    if inverted:
        np.subtract(255, display, out=display)
    if input_policy is None or values is None:
        return _image(display, geometry, index, window)
    picture = grey_model_picture(values, display, window, input_policy, invert=inverted)
    return replace(
        _image(display, geometry, index, window), model_input=picture.pixels, input_window=picture.input_window
    )


def dicom_decode_bytes(ds: Dataset) -> int:
    """Peak bytes decoding one frame of ``ds`` takes, estimated from the Image Pixel module.

    One frame is decoded at a time (native Pixel Data is already in memory as the file).
    Per sample: the decoder's output (Bits Allocated rounded up to bytes; twice that for an
    encapsulated syntax, whose decoder fills a buffer and then shapes a copy), plus for
    grayscale the float32 modality values, the uint8 display and a stored-value copy (the
    percentile window, the model input); for YBR colour pydicom's float64 conversion, and
    the uint8 display for any colour.
    """
    geometry = _geometry(ds, DEFAULT_MAX_PIXELS * 2**16)  # the pixel limit is checked by the caller
    samples = geometry.rows * geometry.columns * geometry.samples_per_pixel
    sample_bytes = max(1, (geometry.bits_allocated + 7) // 8)
    decoder = sample_bytes * (2 if _maybe_encapsulated(ds) else 1)
    if geometry.photometric in MONOCHROME:
        working = _GREY_WORKING_BYTES + sample_bytes
    elif geometry.photometric.startswith("YBR"):
        working = _YBR_WORKING_BYTES + 1
    else:
        working = 1
    return samples * (decoder + working)


def _maybe_encapsulated(ds: Dataset) -> bool:
    """True unless the Transfer Syntax UID is a known native one (unknown ones are refused later)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return not isinstance(syntax, str) or UID(syntax).is_encapsulated
    except ValueError:  # not a transfer syntax pydicom knows
        return True


def _image(pixels: npt.NDArray[np.uint8], geometry: _Geometry, index: int, window: Window | None) -> DecodedImage:
    return DecodedImage(np.ascontiguousarray(pixels), "dicom", geometry.frames, index, window)


def _palette_to_rgb(frame: npt.NDArray[np.generic], ds: Dataset) -> npt.NDArray[np.uint8]:
    """PS3.3 C.7.6.3.1.5: index the Red/Green/Blue Palette Color Lookup Tables."""
    try:
        rgb: npt.NDArray[np.generic] = apply_color_lut(frame, ds)
    except _DECODE_ERRORS as exc:
        raise InconsistentPixelData(f"palette colour lookup tables are unusable: {_one_line(exc)}") from exc
    return scale_to_uint8(rgb, 8 * rgb.dtype.itemsize)


def _positive_int(ds: Dataset, keyword: str, tag: str) -> int:
    value = ds.get(keyword)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InconsistentPixelData(f"{tag} {keyword} is missing or not a positive integer")
    return value


def _geometry(ds: Dataset, max_pixels: int) -> _Geometry:
    """Validate the Image Pixel module (PS3.3 C.7.6.3.1) before touching pixel data."""
    if "PixelData" not in ds:
        raise NoPixelData("dataset has no (7FE0,0010) Pixel Data")
    rows = _positive_int(ds, "Rows", "(0028,0010)")
    columns = _positive_int(ds, "Columns", "(0028,0011)")
    if rows * columns > max_pixels:
        raise DecompressionBomb(f"{rows}x{columns} frame exceeds the {max_pixels}-pixel limit")
    samples = _positive_int(ds, "SamplesPerPixel", "(0028,0002)")
    bits = _positive_int(ds, "BitsAllocated", "(0028,0100)")
    if bits != 1 and (bits % 8 or bits > 64):
        raise InconsistentPixelData(f"(0028,0100) Bits Allocated {bits} is not 1 or a multiple of 8 <= 64")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    expected_samples = 1 if photometric in (*MONOCHROME, PALETTE) else 3 if photometric in COLOR else None
    if expected_samples is None:
        raise InconsistentPixelData(f"(0028,0004) Photometric Interpretation {photometric!r} is unsupported")
    if samples != expected_samples:
        raise InconsistentPixelData(
            f"(0028,0002) Samples per Pixel is {samples} but {photometric} needs {expected_samples}"
        )
    return _Geometry(rows, columns, samples, bits, _frame_count(ds), photometric)


def _frame_count(ds: Dataset) -> int:
    """(0028,0008) Number of Frames; absent, empty or 0 means one frame (as pydicom reads it)."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise InconsistentPixelData("(0028,0008) Number of Frames is not an integer") from exc
    if frames < 0:
        raise InconsistentPixelData(f"(0028,0008) Number of Frames {frames} is negative")
    return max(frames, 1)


def _bits_stored(ds: Dataset, geometry: _Geometry) -> int:
    stored = ds.get("BitsStored")
    if isinstance(stored, int) and 0 < stored <= geometry.bits_allocated:
        return stored
    return geometry.bits_allocated


def _check_pixel_data(ds: Dataset, geometry: _Geometry, index: int, max_pixels: int) -> None:
    """Refuse syntaxes nothing here decodes, native pixel data whose length lies, and
    compressed frames whose codestream header declares another size or a bomb."""
    syntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntax(f"no pixel decoder for transfer syntax {syntax.name}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedTransferSyntax(f"no installed plugin decodes {syntax.name} ({missing})")
    if decoder.is_native:
        _check_native_length(len(ds.PixelData or b""), geometry)
    else:
        check_encapsulated_frame(
            ds, index, rows=geometry.rows, columns=geometry.columns, frames=geometry.frames, max_pixels=max_pixels
        )


def _transfer_syntax(ds: Dataset) -> UID:
    """(0002,0010) Transfer Syntax UID: present and single-valued (PS3.10 7.1, VM 1)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not syntax:
        raise UnsupportedTransferSyntax("dataset has no (0002,0010) Transfer Syntax UID")
    if not isinstance(syntax, str):
        raise UnsupportedTransferSyntax("(0002,0010) Transfer Syntax UID is not a single UID")
    return UID(syntax)


def _check_native_length(actual: int, geometry: _Geometry) -> None:
    """PS3.5 8.1.1: native Pixel Data is exactly Rows x Columns x Samples x Bits x Frames.

    Excess shorter than one frame is tolerated as trailing padding (as pydicom does);
    a whole frame or more of excess means Rows/Columns/Bits/Number of Frames understate it.
    """
    pixels = geometry.rows * geometry.columns * geometry.samples_per_pixel * geometry.frames
    bits = geometry.bits_allocated
    expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
    if geometry.photometric == "YBR_FULL_422":  # PS3.3 C.7.6.3.1.2: two samples per pixel on disk
        expected = expected // 3 * 2
    frame_bytes = max(expected // geometry.frames, 2)
    if actual < expected:
        raise InconsistentPixelData(
            f"Pixel Data is {actual} bytes but the Image Pixel module needs {expected}: "
            "truncated, or Rows/Columns/Bits Allocated/Samples per Pixel overstate it"
        )
    if actual - expected >= frame_bytes:
        raise InconsistentPixelData(
            f"Pixel Data is {actual} bytes but the Image Pixel module describes {expected}: "
            "Rows/Columns/Bits Allocated/Number of Frames understate it"
        )


def _decode_frame(ds: Dataset, index: int) -> npt.NDArray[np.generic]:
    """Decode frame ``index`` only; YBR is converted to RGB by the decoder (``as_rgb``).

    The frame may be a read-only view on the Pixel Data (see ``_native_view``): never write to it.
    """
    try:
        plugin = _PLUGIN_FOR.get(ds.file_meta.TransferSyntaxUID, "")
        frame = _native_view(ds, index)
        if frame is None:
            frame = pixel_array(ds, index=index, decoding_plugin=plugin)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntax(f"pixel data cannot be decoded here: {_one_line(exc)}") from exc
    except _DECODE_ERRORS as exc:
        raise InconsistentPixelData(f"pixel data could not be decoded: {_one_line(exc)}") from exc
    return frame.astype(frame.dtype.newbyteorder("="), copy=False)


def _native_view(ds: Dataset, index: int) -> npt.NDArray[np.generic] | None:
    """Frame ``index`` of native little-endian grayscale as a view on (7FE0,0010): no frame-sized copy.

    None where pydicom copies anyway (encapsulated, big endian, bit-packed, colour) and
    where a pixel has unused high bits set (PS3.5 8.1.1): the copy pydicom then makes
    with ``correct_unused_bits`` masks them (unsigned) or sign-extends (signed).
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if syntax.is_encapsulated or not syntax.is_little_endian or photometric not in MONOCHROME or ds.BitsAllocated < 8:
        return None
    view: npt.NDArray[np.generic] = pixel_array(ds, index=index, view_only=True, correct_unused_bits=False)
    return view if _within_bits_stored(view, int(ds.BitsStored)) else None


def _within_bits_stored(frame: npt.NDArray[np.generic], bits_stored: int) -> bool:
    """True when every pixel already is what pydicom's unused-bit correction would make it.

    min and max are reductions, so the check allocates nothing frame-sized.
    """
    if bits_stored >= 8 * frame.dtype.itemsize or frame.size == 0:
        return True
    signed = frame.dtype.kind == "i"
    low = -(1 << (bits_stored - 1)) if signed else 0
    high = (1 << (bits_stored - 1 if signed else bits_stored)) - 1
    return low <= int(frame.min()) and int(frame.max()) <= high


def _one_line(exc: Exception) -> str:
    """pydicom's decoder messages name elements and plugins, never patient data."""
    return " ".join(str(exc).split()) or type(exc).__name__
