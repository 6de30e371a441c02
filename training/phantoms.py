"""A generated brain-phantom set whose lesion masks are known, for measuring where maps point.

Drawings, not patients: a head ellipse (scalp/skull rim, textured parenchyma, ventricles)
and at most one lesion, whose class is told by its shape, place and intensity the way the
public brain-tumour sets differ:

- ``glioma``: an irregular, heterogeneous intra-axial blob (bright rim, darker core) in
  either hemisphere, away from the midline;
- ``meningioma``: a round, homogeneous, very bright extra-axial blob sitting on the dura
  (the brain's edge) at any angle of the upper three quarters;
- ``pituitary``: a small bright oval on the midline, low (the sella);
- ``notumor``: no lesion (an empty mask).

Head size, position, contrast and texture are jittered per image, so lesions are seldom at
the image centre and the centre-prior baseline is a real one. Everything is drawn from
``numpy.random.default_rng(seed)`` (the lesion from its own stream, so one seed gives the
same head with or without a lesion): the same seed gives the same pixels and mask.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
FloatImage = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Phantom:
    """One slice (uint8, size x size), its lesion mask (empty for ``notumor``) and its label."""

    image: npt.NDArray[np.uint8]
    mask: Mask
    label: str
    seed: int


@dataclass(frozen=True)
class Head:
    """The head ellipse: centre and brain semi-axes as fractions of the image side."""

    cx: float
    cy: float
    rx: float
    ry: float


def phantom(seed: int, label: str, *, size: int = 64) -> Phantom:
    """One phantom of class ``label``; deterministic in (seed, label, size)."""
    if label not in LABELS:
        raise ValueError(f"unknown phantom label {label!r}; known: {LABELS}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    head = Head(cx=rng.uniform(0.45, 0.55), cy=rng.uniform(0.45, 0.55), rx=rng.uniform(0.32, 0.38), ry=0.0)
    head = Head(head.cx, head.cy, head.rx, ry=head.rx * rng.uniform(1.1, 1.2))
    image = _head(rng, xx, yy, head, size)
    mask = np.zeros((size, size), dtype=bool)
    if label != "notumor":  # its own stream: the same seed draws the same head with and without a lesion
        intensity, mask = LESIONS[label](np.random.default_rng((seed, 1)), xx, yy, head)
        mask &= _ellipse(xx, yy, head, 1.12) < 1.0  # inside the skull
        image = np.where(mask, intensity, image)
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0.0, 6.0, image.shape)
    return Phantom(image=np.clip(np.rint(image), 0, 255).astype(np.uint8), mask=mask, label=label, seed=seed)


def phantom_set(count: int, *, seed: int = 0, size: int = 64) -> list[Phantom]:
    """``count`` phantoms, classes in turn (balanced), image i drawn from seed ``seed * 1_000_003 + i``."""
    return [phantom(seed * 1_000_003 + i, LABELS[i % len(LABELS)], size=size) for i in range(count)]


def _ellipse(xx: FloatImage, yy: FloatImage, head: Head, scale: float = 1.0) -> FloatImage:
    return np.asarray(((xx - head.cx) / (head.rx * scale)) ** 2 + ((yy - head.cy) / (head.ry * scale)) ** 2)


def _head(rng: np.random.Generator, xx: FloatImage, yy: FloatImage, head: Head, size: int) -> FloatImage:
    """Skull rim, parenchyma with coarse texture, and two ventricles."""
    brain = _ellipse(xx, yy, head) < 1.0
    image = np.where(_ellipse(xx, yy, head, 1.12) < 1.0, 170.0, 0.0)
    cells = max(1, size // 8)
    texture = np.kron(rng.normal(0.0, 1.0, (cells, cells)), np.ones((size // cells + 1,) * 2))[:size, :size]
    image = np.where(brain, 100.0 + 12.0 * texture, image)
    ventricles = ((np.abs(xx - head.cx) - 0.05) / 0.035) ** 2 + ((yy - head.cy + 0.03) / 0.10) ** 2 < 1.0
    return np.asarray(np.where(ventricles, 45.0, image))


def _blob(xx: FloatImage, yy: FloatImage, cx: float, cy: float, rx: float, ry: float) -> FloatImage:
    return np.asarray(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)


def _glioma(rng: np.random.Generator, xx: FloatImage, yy: FloatImage, head: Head) -> tuple[FloatImage, Mask]:
    """Three overlapping lobes in one hemisphere: irregular, bright rim, darker necrotic core."""
    side = rng.choice([-1.0, 1.0])
    cx = head.cx + side * rng.uniform(0.35, 0.6) * head.rx
    cy = head.cy + rng.uniform(-0.55, 0.45) * head.ry
    radius = rng.uniform(0.07, 0.1)
    lobes = [
        _blob(xx, yy, cx + dx, cy + dy, radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.6, 1.0))
        for dx, dy in rng.uniform(-0.05, 0.05, (3, 2))
    ]
    distance = np.minimum.reduce(lobes)
    intensity = np.where(distance < 0.35, 120.0, 185.0 + rng.uniform(-10, 10))
    return intensity, distance < 1.0


def _meningioma(rng: np.random.Generator, xx: FloatImage, yy: FloatImage, head: Head) -> tuple[FloatImage, Mask]:
    """A round homogeneous very bright blob centred on the brain's edge (dural-based)."""
    angle = rng.uniform(-0.75 * np.pi, 0.75 * np.pi) - np.pi / 2  # anything but straight down
    cx, cy = head.cx + head.rx * np.cos(angle), head.cy + head.ry * np.sin(angle)
    radius = rng.uniform(0.07, 0.1)
    distance = _blob(xx, yy, cx, cy, radius, radius)
    return np.full_like(xx, 235.0), distance < 1.0


def _pituitary(rng: np.random.Generator, xx: FloatImage, yy: FloatImage, head: Head) -> tuple[FloatImage, Mask]:
    """A small bright oval on the midline, low in the brain (the sella)."""
    cx = head.cx + rng.uniform(-0.015, 0.015)
    cy = head.cy + rng.uniform(0.55, 0.7) * head.ry
    distance = _blob(xx, yy, cx, cy, rng.uniform(0.05, 0.07), rng.uniform(0.035, 0.05))
    return np.full_like(xx, 205.0), distance < 1.0


LESIONS = {"glioma": _glioma, "meningioma": _meningioma, "pituitary": _pituitary}
