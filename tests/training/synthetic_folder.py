"""A small labelled folder of synthetic MR-like PNGs whose classes a tiny network can learn.

Lesions sit on the midline (x = 0.5), so a left-right flip keeps each picture's class:
glioma high and medium, meningioma large and central, pituitary small and low, notumor none.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.synthetic import Lesion, synthetic_slice

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
LESIONS: dict[str, tuple[float, float] | None] = {  # (y centre, radius) as fractions of the side
    "glioma": (0.28, 0.12),
    "meningioma": (0.5, 0.22),
    "notumor": None,
    "pituitary": (0.74, 0.07),
}


def picture(label: str, seed: int, size: int = 64) -> np.ndarray:
    """One uint8 slice of ``label``: full range to 0..255, as the public sets were exported."""
    lesion_spec = LESIONS[label]
    rng = np.random.default_rng(seed)
    lesion = None
    if lesion_spec is not None:
        y, radius = lesion_spec
        lesion = Lesion(0.5, y + rng.uniform(-0.03, 0.03), radius * rng.uniform(0.9, 1.1))
    values = synthetic_slice(size, lesion=lesion, seed=seed).astype(np.float64)
    return np.rint((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = 12, labels: tuple[str, ...] = LABELS, size: int = 64) -> Path:
    """``root/<label>/<n>.png`` for every label; returns ``root``."""
    for offset, label in enumerate(labels):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            ok = cv2.imwrite(str(folder / f"{index:03d}.png"), picture(label, 1000 * offset + index, size))
            assert ok
    return root
