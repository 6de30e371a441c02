"""Synthetic brain-like MR slices for the demo, tests and benchmarks.

They are drawings, not patients: an elliptical head, grey/white matter texture, ventricles
and optionally one bright lesion. Nothing about the classifier's accuracy can be learned
from them; they exist so the whole pipeline can run on a machine with no patient data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lesion:
    x: float  # centre, as a fraction of the width
    y: float  # centre, as a fraction of the height
    radius: float  # as a fraction of the width


def synthetic_slice(size: int = 256, *, lesion: Lesion | None = None, seed: int = 0) -> np.ndarray:
    """A 12-bit MR-like slice (uint16, ``size`` × ``size``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    head = ((xx - 0.5) / 0.40) ** 2 + ((yy - 0.5) / 0.46) ** 2
    brain = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.5) / 0.42) ** 2
    image = np.where(head < 1.0, 900.0, 0.0)  # scalp and skull
    image = np.where(brain < 1.0, 600.0, image)
    texture = rng.normal(0.0, 1.0, (size // 8, size // 8)).astype(np.float32)
    image += np.where(brain < 1.0, 90.0 * np.kron(texture, np.ones((8, 8), np.float32)), 0.0)
    ventricles = ((np.abs(xx - 0.5) - 0.06) / 0.04) ** 2 + ((yy - 0.47) / 0.12) ** 2
    image = np.where(ventricles < 1.0, 150.0, image)
    if lesion is not None:
        distance = np.hypot(xx - lesion.x, yy - lesion.y) / lesion.radius
        image = np.where(distance < 1.0, 1500.0 - 300.0 * distance, image)
    image += rng.normal(0.0, 25.0, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)
