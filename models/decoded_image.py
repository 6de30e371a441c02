"""The one shape every decoder in the model library returns."""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

ImageSource = Literal["dicom", "png", "jpeg"]
Window = tuple[float, float]


@dataclass(frozen=True)
class DecodedImage:
    """Display-ready pixels plus where they came from.

    ``pixels`` is uint8 and C-contiguous: HxW for grayscale, HxWx3 in RGB order for colour.
    ``window`` is the (center, width) VOI window applied to a grayscale DICOM frame, in
    modality LUT output units; ``None`` for rasters and colour images.
    """

    pixels: npt.NDArray[np.uint8]
    source: ImageSource
    frame_count: int
    frame_index: int
    window: Window | None
    model_input: npt.NDArray[np.uint8] | None = None  # made by the manifest's input policy, when asked for
    input_window: Window | None = None  # the (center, width) that made ``model_input``

    @property
    def model_pixels(self) -> npt.NDArray[np.uint8]:
        """What the classifier is fed: the policy's picture, or the display pixels (rasters, colour)."""
        return self.pixels if self.model_input is None else self.model_input

    @property
    def is_color(self) -> bool:
        """True for HxWx3 RGB pixels."""
        return self.pixels.ndim == 3
