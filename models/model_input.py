"""The picture the model sees, made from stored values by the manifest's input policy.

The display window is a viewer's choice (PS3.3 C.11.2) and differs between scanners and
sites; a classifier trained on exported pictures saw none of them. So the model input is
made separately from the display: ``full_range`` maps the frame's own minimum..maximum
of modality values to 0..255, ``percentile`` its ``percentiles``, ``stored_window`` uses
the display picture as is. ``input_window`` records what was used, as (center, width) in
modality units, with each result.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.decoded_image import Window
from models.manifest import InputPolicy

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ModelPicture:
    pixels: UInt8Array
    input_window: Window | None


def grey_model_picture(
    values: FloatArray, display: UInt8Array, display_window: Window | None, policy: InputPolicy, *, invert: bool
) -> ModelPicture:
    """uint8 model input of one grayscale frame; ``values`` are Modality LUT output (float32)."""
    if policy.intensity == "stored_window":
        return ModelPicture(display, display_window)
    if policy.intensity == "full_range":
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(values, policy.percentiles))
    pixels = stretch(values, low, high)
    if invert:  # MONOCHROME1: high values are dark (PS3.3 C.7.6.3.1.2); the model expects bright = high signal
        np.subtract(255, pixels, out=pixels)
    return ModelPicture(pixels, ((low + high) / 2.0, high - low))


def stretch(values: FloatArray, low: float, high: float) -> UInt8Array:
    """Linear map of low..high to 0..255, clipped; a constant frame (high <= low) is all zero."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    np.multiply(scaled, np.float32(255.0 / (high - low)), out=scaled)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)
