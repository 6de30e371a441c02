"""How faithful and how well placed an explanation map is, in plain NumPy.

Two families of numbers:

- **Faithfulness** (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation
  of Black-box Models", section 4.1): the *deletion* curve removes pixels in order of
  decreasing saliency and records the model's probability of the target class; a faithful
  map makes it fall fast (low area under the curve). The *insertion* curve starts from a
  blurred copy and puts the original pixels back in the same order; a faithful map makes
  it rise fast (high area). Removed pixels take the image's mean intensity (RISE used
  zero; in an MR slice black is air, itself evidence for "no tumour").
- **Localisation** against a known lesion mask: the pointing game (Zhang et al. 2018,
  "Top-down Neural Attention by Excitation Backprop": a hit when the map's maximum lies
  within 15 pixels of the object at 224 px, here scaled to the image's shorter side), the
  energy-based pointing game (Wang et al. 2020, "Score-CAM", section 5.2: the fraction of
  the map's energy inside the object; they used the bounding box, we use the mask) and
  the IoU of the map thresholded at ``IOU_LEVEL`` of its maximum with the mask.

Every map here is a non-negative float array at the image's resolution (``upsample``
brings a CAM-layer map there); ``centre_prior`` is the baseline each method must beat.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Images = npt.NDArray[np.uint8]
ScoreFn = Callable[[Images], npt.NDArray[np.floating]]  # N images -> N target-class probabilities

POINTING_TOLERANCE_AT_224 = 15.0  # Zhang et al. 2018, pixels at a 224 px input
IOU_LEVEL = 0.5  # fraction of the map maximum; the same level that bounds the drawn region
CENTRE_PRIOR_SIGMA = 0.25  # standard deviation of the centre prior, as a fraction of each side
INSERTION_BLUR_SIGMA = 0.05  # Gaussian blur of the insertion canvas, as a fraction of the shorter side


@dataclass(frozen=True)
class Curve:
    """Target-class probability after removing (or inserting) each fraction of the pixels."""

    fractions: FloatArray
    scores: FloatArray

    @property
    def auc(self) -> float:
        """Trapezoidal area under the curve over fractions 0..1."""
        heights = (self.scores[1:] + self.scores[:-1]) / 2.0
        return float(np.sum(heights * np.diff(self.fractions)))


def saliency_order(saliency: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Flat pixel indices, most salient first; ties keep raster order (a stable sort)."""
    values = np.asarray(saliency, dtype=np.float64).ravel()
    return np.argsort(-values, kind="stable")


def deletion_curve(image: Images, saliency: npt.ArrayLike, score: ScoreFn, *, steps: int = 16) -> Curve:
    """RISE deletion: the top k/steps of the pixels take the image's mean, k = 0..steps."""
    baseline = np.full_like(image, round(float(image.mean())))
    return _morph_curve(image, baseline, saliency, score, steps=steps)


def insertion_curve(image: Images, saliency: npt.ArrayLike, score: ScoreFn, *, steps: int = 16) -> Curve:
    """RISE insertion: a blurred canvas gets the top k/steps of the original pixels back."""
    sigma = INSERTION_BLUR_SIGMA * min(image.shape[:2])
    canvas = np.clip(np.rint(gaussian_blur(image.astype(np.float64), sigma)), 0, 255).astype(np.uint8)
    return _morph_curve(canvas, image, saliency, score, steps=steps)


def _morph_curve(start: Images, end: Images, saliency: npt.ArrayLike, score: ScoreFn, *, steps: int) -> Curve:
    """Images that take ``end``'s pixels in saliency order, from none to all, scored in one batch."""
    height, width = start.shape[:2]
    if np.shape(saliency) != (height, width):
        raise ValueError(f"saliency has shape {np.shape(saliency)}, the image is {height}x{width}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    order = saliency_order(saliency)
    counts = np.rint(np.linspace(0, order.size, steps + 1)).astype(int)
    batch = np.repeat(start[np.newaxis], steps + 1, axis=0)
    flat_batch = batch.reshape(steps + 1, height * width, *start.shape[2:])
    flat_end = end.reshape(height * width, *end.shape[2:])
    for row, count in enumerate(counts):
        flat_batch[row, order[:count]] = flat_end[order[:count]]
    scores = np.asarray(score(batch), dtype=np.float64).reshape(steps + 1)
    return Curve(fractions=counts / order.size, scores=scores)


def gaussian_blur(image: FloatArray, sigma: float) -> FloatArray:
    """Separable Gaussian blur of the first two axes, edges reflected."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-6)) ** 2)
    taps /= taps.sum()
    blurred = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * blurred.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(blurred, pad, mode="reflect")
        blurred = np.apply_along_axis(lambda line: np.convolve(line, taps, mode="valid"), axis, padded)
    return blurred


def upsample(cam: npt.ArrayLike, shape: tuple[int, int]) -> FloatArray:
    """Bilinear resize of a 2-D map to ``shape`` with half-pixel centres (as OpenCV's INTER_LINEAR)."""
    values = np.asarray(cam, dtype=np.float64)
    rows = _linear_weights(values.shape[0], shape[0])
    cols = _linear_weights(values.shape[1], shape[1])
    return np.asarray(rows @ values @ cols.T, dtype=np.float64)


def _linear_weights(size_in: int, size_out: int) -> FloatArray:
    """The size_out x size_in matrix of 1-D linear interpolation weights."""
    centres = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    weights = np.zeros((size_out, size_in))
    weights[np.arange(size_out), low] += 1.0 - (centres - low)
    weights[np.arange(size_out), high] += centres - low
    return weights


def pointing_tolerance(shape: tuple[int, int]) -> float:
    """Zhang et al.'s 15 px at 224 px, scaled to the shorter side of ``shape``."""
    return POINTING_TOLERANCE_AT_224 * min(shape) / 224.0


def pointing_game(saliency: npt.ArrayLike, mask: npt.ArrayLike, *, tolerance: float | None = None) -> bool:
    """A hit when the map's (first) maximum lies within ``tolerance`` px of a mask pixel.

    A constant map (e.g. all zero) points nowhere and counts as a miss; so does an empty mask.
    """
    values, lesion = _check_pair(saliency, mask)
    if not lesion.any() or float(values.max()) <= float(values.min()):
        return False
    tolerance = pointing_tolerance(lesion.shape) if tolerance is None else tolerance
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    lesion_y, lesion_x = np.nonzero(lesion)
    return bool(np.min(np.hypot(lesion_y - y, lesion_x - x)) <= tolerance)


def energy_pointing_game(saliency: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """Fraction of the (non-negative) map's sum inside the mask; 0 for an all-zero map."""
    values, lesion = _check_pair(saliency, mask)
    values = np.maximum(values, 0.0)
    total = float(values.sum())
    return float(values[lesion].sum()) / total if total > 0 else 0.0


def iou(saliency: npt.ArrayLike, mask: npt.ArrayLike, *, level: float = IOU_LEVEL) -> float:
    """IoU of {map >= level * max} with the mask; an all-zero map selects nothing (IoU 0)."""
    values, lesion = _check_pair(saliency, mask)
    peak = float(values.max())
    region = values >= level * peak if peak > 0 else np.zeros_like(lesion)
    union = int(np.sum(region | lesion))
    return int(np.sum(region & lesion)) / union if union else 0.0


def centre_prior(shape: tuple[int, int], *, sigma: float = CENTRE_PRIOR_SIGMA) -> FloatArray:
    """A Gaussian at the image centre (sigma a fraction of each side): the map that knows nothing."""
    ys = (np.arange(shape[0]) + 0.5) / shape[0] - 0.5
    xs = (np.arange(shape[1]) + 0.5) / shape[1] - 0.5
    return np.asarray(np.exp(-0.5 * ((ys[:, None] / sigma) ** 2 + (xs[None, :] / sigma) ** 2)), dtype=np.float64)


def _check_pair(saliency: npt.ArrayLike, mask: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    values = np.asarray(saliency, dtype=np.float64)
    lesion = np.asarray(mask, dtype=bool)
    if values.shape != lesion.shape or values.ndim != 2:
        raise ValueError(f"map {values.shape} and mask {lesion.shape} must be the same 2-D shape")
    return values, lesion
