"""Value-of-interest windowing to 8-bit display values (PS3.3 C.11.2)."""

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.decoded_image import Window

FloatArray = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]

DISPLAY_MAX = 255.0
ROBUST_PERCENTILES = (0.5, 99.5)

# (0028,1056) VOI LUT Function defined terms, PS3.3 C.11.2.1.3; absent means LINEAR.
VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
VOI_FUNCTIONS: tuple[VoiFunction, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def is_valid_window(window: Window, function: VoiFunction = "LINEAR") -> bool:
    """Both values finite; Window Width >= 1 for LINEAR (C.11.2.1.2), > 0 otherwise (C.11.2.1.3)."""
    center, width = window
    least_ok = width >= 1.0 if function == "LINEAR" else width > 0.0
    return math.isfinite(center) and math.isfinite(width) and least_ok


def apply_window(values: FloatArray, window: Window, function: VoiFunction) -> UInt8Array:
    """Apply the VOI LUT Function ``function`` (PS3.3 C.11.2.1.2/C.11.2.1.3) with output range 0..255.

    LINEAR_EXACT: y = ((x - c) / w + 0.5) * 255, clipped to 0..255 (C.11.2.1.3.2).
    SIGMOID: y = 255 / (1 + exp(-4 (x - c) / w)) (C.11.2.1.3.1).
    """
    if function == "LINEAR":
        return linear_window(values, window)
    center, width = window
    if not is_valid_window(window, function):
        raise ValueError(f"window width must be finite and > 0 for {function}, got {width!r}")
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflow far below the center is 0 output, as intended
            mapped = DISPLAY_MAX / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:
        mapped = ((values - center) / width + 0.5) * DISPLAY_MAX
    display: UInt8Array = np.rint(np.clip(mapped, 0.0, DISPLAY_MAX)).astype(np.uint8)
    return display


def linear_window(values: FloatArray, window: Window) -> UInt8Array:
    """Apply the LINEAR VOI LUT function of PS3.3 C.11.2.1.2.1 with output range 0..255.

    ``values`` are modality LUT output (e.g. Hounsfield units). Width 1 is the standard's
    threshold case: values <= center - 0.5 go to 0, the rest to 255.
    """
    center, width = window
    if not is_valid_window(window):
        raise ValueError(f"window width must be finite and >= 1, got {width!r}")
    lower = center - 0.5 - (width - 1.0) / 2.0
    upper = center - 0.5 + (width - 1.0) / 2.0
    if width == 1.0:
        threshold: UInt8Array = np.where(values <= lower, 0, 255).astype(np.uint8)
        return threshold
    ramp = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * DISPLAY_MAX
    mapped = np.where(values <= lower, 0.0, np.where(values > upper, DISPLAY_MAX, ramp))
    display: UInt8Array = np.rint(np.clip(mapped, 0.0, DISPLAY_MAX)).astype(np.uint8)
    return display


def percentile_window(values: FloatArray) -> Window:
    """A robust window when the file carries none: the 0.5th..99.5th percentile range.

    Chosen so that the linear function above maps the low percentile to 0 and the high one
    to 255 exactly; a handful of hot or dead pixels cannot squash the rest of the frame.
    A constant frame gets width 1 and renders black.
    """
    low, high = (float(p) for p in np.percentile(values, ROBUST_PERCENTILES))
    return ((low + high + 1.0) / 2.0, high - low + 1.0)


def scale_to_uint8(values: npt.NDArray[np.generic], bits: int) -> UInt8Array:
    """Linearly map 0..2**bits-1 onto 0..255 (colour data is already display values)."""
    if bits == 8 and values.dtype == np.uint8:
        return np.ascontiguousarray(values)
    full_scale = float(2**bits - 1)
    scaled = values.astype(np.float64) * (DISPLAY_MAX / full_scale)
    return np.rint(np.clip(scaled, 0.0, DISPLAY_MAX)).astype(np.uint8)
