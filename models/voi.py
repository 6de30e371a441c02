"""Value-of-interest windowing to 8-bit display values (PS3.3 C.11.2).

Everything works in float32 on one block of values at a time, with in-place ufuncs on a
1 MiB scratch buffer: the only frame-sized allocation is the uint8 result. Callers' arrays
are never modified. ``rescale`` (slope, intercept) applies the Modality LUT (C.11.1) block
by block too, with the very float32 operations of a whole-frame rescale, so stored values
(uint16, int16) are windowed without a frame-sized float32 copy.
"""

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.decoded_image import Window

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]
Rescale = tuple[float, float]  # (0028,1053) Rescale Slope, (0028,1052) Rescale Intercept
# Writes the rounded 0..255 display values of a block of input into a float32 scratch of its size.
BlockMap = Callable[[npt.NDArray[np.generic], FloatArray], None]

DISPLAY_MAX = 255.0
ROBUST_PERCENTILES = (0.5, 99.5)
BLOCK_VALUES = 1 << 18  # 1 MiB of float32 scratch: cache-sized, and few enough Python round trips per frame

# (0028,1056) VOI LUT Function defined terms, PS3.3 C.11.2.1.3; absent means LINEAR.
VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
VOI_FUNCTIONS: tuple[VoiFunction, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def is_valid_window(window: Window, function: VoiFunction = "LINEAR") -> bool:
    """Both values finite; Window Width >= 1 for LINEAR (C.11.2.1.2), > 0 otherwise (C.11.2.1.3)."""
    center, width = window
    least_ok = width >= 1.0 if function == "LINEAR" else width > 0.0
    return math.isfinite(center) and math.isfinite(width) and least_ok


def apply_window(
    values: npt.NDArray[np.generic], window: Window, function: VoiFunction, rescale: Rescale | None = None
) -> UInt8Array:
    """Apply the VOI LUT Function ``function`` (PS3.3 C.11.2.1.2/C.11.2.1.3) with output range 0..255.

    LINEAR_EXACT: y = ((x - c) / w + 0.5) * 255, clipped to 0..255 (C.11.2.1.3.2).
    SIGMOID: y = 255 / (1 + exp(-4 (x - c) / w)) (C.11.2.1.3.1).
    """
    if function == "LINEAR":
        return linear_window(values, window, rescale)
    center, width = window
    if not is_valid_window(window, function):
        raise ValueError(f"window width must be finite and > 0 for {function}, got {width!r}")
    if function == "SIGMOID":
        return _map_blocks(values, _sigmoid(center, width), rescale)
    return _map_blocks(values, _ramp(center, DISPLAY_MAX / width), rescale)


def linear_window(values: npt.NDArray[np.generic], window: Window, rescale: Rescale | None = None) -> UInt8Array:
    """Apply the LINEAR VOI LUT function of PS3.3 C.11.2.1.2.1 with output range 0..255.

    ``values`` are modality LUT output (e.g. Hounsfield units). Width 1 is the standard's
    threshold case: values <= center - 0.5 go to 0, the rest to 255. Otherwise the ramp
    ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped, which is 0 at and below
    c - 0.5 - (w - 1) / 2 and 255 above c - 0.5 + (w - 1) / 2 as the standard asks.
    """
    center, width = window
    if not is_valid_window(window):
        raise ValueError(f"window width must be finite and >= 1, got {width!r}")
    if width == 1.0:
        return _map_blocks(values, _threshold(center - 0.5), rescale)
    return _map_blocks(values, _ramp(center - 0.5, DISPLAY_MAX / (width - 1.0)), rescale)


def percentile_window(values: FloatArray) -> Window:
    """A robust window when the file carries none: the 0.5th..99.5th percentile range.

    See ``window_for_range``. np.percentile partitions one copy of ``values`` in their own
    dtype (4 bytes a pixel for float32 modality values), never a float64 copy.
    """
    low, high = (float(p) for p in np.percentile(values, ROBUST_PERCENTILES))
    return window_for_range(low, high)


def window_for_range(low: float, high: float) -> Window:
    """The LINEAR window that maps ``low`` to 0 and ``high`` to 255 exactly.

    With percentiles as the range, a handful of hot or dead pixels cannot squash the rest
    of the frame. A constant frame gets width 1 and renders black.
    """
    return ((low + high + 1.0) / 2.0, high - low + 1.0)


def scale_to_uint8(values: npt.NDArray[np.generic], bits: int) -> UInt8Array:
    """Linearly map 0..2**bits-1 onto 0..255 (colour data is already display values).

    x * 255 is exact in float32 for inputs up to 16 bits and the one division is correctly
    rounded, so the result equals a float64 computation (no input lands within rounding
    error of a .5: 2**bits - 1 is odd).
    """
    if bits == 8 and values.dtype == np.uint8:
        return np.ascontiguousarray(values)
    full_scale = np.float32(2**bits - 1)

    def scale(block: npt.NDArray[np.generic], scratch: FloatArray) -> None:
        np.multiply(block, np.float32(DISPLAY_MAX), out=scratch, dtype=np.float32)
        np.divide(scratch, full_scale, out=scratch)
        _clip_and_round(scratch)

    return _map_blocks(values, scale)


def lookup_uint8(
    values: npt.NDArray[np.generic], table: UInt8Array, first_mapped: int, rescale: Rescale | None = None
) -> UInt8Array:
    """``table[rint(x) - first_mapped]``, the index clamped to the table (PS3.3 C.11.2.1.1 LUT Descriptor)."""
    last = float(len(table) - 1)

    def look_up(block: npt.NDArray[np.generic], scratch: FloatArray) -> None:
        np.rint(block, out=scratch, dtype=np.float32)
        np.subtract(scratch, np.float32(first_mapped), out=scratch)
        np.clip(scratch, 0.0, last, out=scratch)
        scratch[...] = table[scratch.astype(np.intp)]

    return _map_blocks(values, look_up, rescale)


def _ramp(origin: float, gain: float) -> BlockMap:
    """(x - origin) * gain + 127.5, clipped to 0..255 and rounded; an overflow to +-inf clips as intended."""

    def ramp(block: npt.NDArray[np.generic], scratch: FloatArray) -> None:
        np.subtract(block, np.float32(origin), out=scratch, dtype=np.float32)
        with np.errstate(over="ignore"):
            np.multiply(scratch, np.float32(gain), out=scratch)
        np.add(scratch, np.float32(DISPLAY_MAX / 2.0), out=scratch)
        _clip_and_round(scratch)

    return ramp


def _threshold(lower: float) -> BlockMap:
    """0 at or below ``lower``, 255 above (LINEAR with width 1, C.11.2.1.2.1)."""

    def threshold(block: npt.NDArray[np.generic], scratch: FloatArray) -> None:
        scratch[...] = block > np.float32(lower)
        np.multiply(scratch, np.float32(DISPLAY_MAX), out=scratch)

    return threshold


def _sigmoid(center: float, width: float) -> BlockMap:
    """255 / (1 + exp(-4 (x - c) / w)); exp overflow far below the center is 0 output, as intended."""

    def sigmoid(block: npt.NDArray[np.generic], scratch: FloatArray) -> None:
        np.subtract(block, np.float32(center), out=scratch, dtype=np.float32)
        with np.errstate(over="ignore"):
            np.multiply(scratch, np.float32(-4.0 / width), out=scratch)
            np.exp(scratch, out=scratch)
        np.add(scratch, np.float32(1.0), out=scratch)
        np.divide(np.float32(DISPLAY_MAX), scratch, out=scratch)
        np.rint(scratch, out=scratch)

    return sigmoid


def _clip_and_round(scratch: FloatArray) -> None:
    np.clip(scratch, 0.0, DISPLAY_MAX, out=scratch)
    np.rint(scratch, out=scratch)


def _rescale_into(block: npt.NDArray[np.generic], rescale: Rescale, scratch: FloatArray) -> None:
    slope, intercept = rescale
    scratch[...] = block  # the float32 cast of astype(np.float32)
    if slope != 1.0:
        np.multiply(scratch, np.float32(slope), out=scratch)
    if intercept != 0.0:
        np.add(scratch, np.float32(intercept), out=scratch)


def _map_blocks(values: npt.NDArray[np.generic], block_map: BlockMap, rescale: Rescale | None = None) -> UInt8Array:
    """The uint8 image of ``values`` under ``block_map``, computed BLOCK_VALUES at a time.

    Only the result is frame-sized (a C-contiguous ``values`` is read in place; any other
    layout is flattened into one copy first). With ``rescale`` each block is first rescaled
    into the scratch (float32: x * slope + intercept, as ``dicom_voi.modality_values``
    does for a whole frame), which ``block_map`` then maps in place.
    """
    display = np.empty(values.shape, dtype=np.uint8)
    flat_values, flat_display = values.reshape(-1), display.reshape(-1)
    scratch = np.empty(min(flat_values.size, BLOCK_VALUES), dtype=np.float32)
    for start in range(0, flat_values.size, BLOCK_VALUES):
        block = flat_values[start : start + BLOCK_VALUES]
        block_scratch = scratch[: block.size]
        if rescale is not None:
            _rescale_into(block, rescale, block_scratch)
            block = block_scratch
        block_map(block, block_scratch)
        flat_display[start : start + block.size] = block_scratch
    return display
