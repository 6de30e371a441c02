"""Where a CAM is focal enough to outline: a head mask, thresholds, and the region's size.

A map is always hottest somewhere, so outlining its maximum on every slice draws a box on
every normal brain. A region is drawn only when (1) the slice's calibrated tumour
probability reaches ``min_tumour_score``, (2) the map's strength (its unnormalised
maximum) reaches ``min_strength``, and (3) the part of the head at or above ``level`` of
that maximum covers at most ``max_head_fraction`` of the head; otherwise the result says
"no focal region" and why. The head mask (Otsu's threshold, the largest component, holes
filled) keeps the region off the background and the image border, as the seeds' contour
crop did.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from models.manifest import RegionPolicy
from models.slice_geometry import Spacing

BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Region:
    focal: bool
    reason: str | None  # why there is no focal region
    mask: BoolMask | None  # the outlined component, original geometry
    box: tuple[int, int, int, int] | None  # x, y, width, height in pixels
    area_px: int
    area_mm2: float | None
    box_mm: tuple[float, float] | None  # width, height in mm


def head_mask(display: npt.NDArray[np.uint8]) -> BoolMask:
    """Otsu foreground, its largest connected component, holes filled."""
    grey = display if display.ndim == 2 else cv2.cvtColor(display, cv2.COLOR_RGB2GRAY)
    _, foreground = cv2.threshold(np.ascontiguousarray(grey), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if count <= 1:
        return np.ones(grey.shape, dtype=bool)  # a blank frame: nothing to exclude
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return np.asarray(filled, dtype=bool)


def find_region(
    cam: npt.NDArray[np.float32],
    head: BoolMask,
    *,
    tumour_score: float,
    strength: float,
    policy: RegionPolicy,
    spacing: Spacing | None,
) -> Region:
    """The focal region of ``cam`` (raw units, original geometry), or why there is none."""
    if tumour_score < policy.min_tumour_score:
        return _none(f"tumour probability {tumour_score:.2f} is below {policy.min_tumour_score:.2f}")
    if strength <= 0.0 or strength < policy.min_strength:
        return _none(f"map strength {strength:.3g} is below {policy.min_strength:.3g}")
    hot = (cam >= policy.level * strength) & head
    head_area = int(head.sum())
    if head_area == 0 or not hot.any():
        return _none("the map's hot area lies outside the head")
    if hot.sum() > policy.max_head_fraction * head_area:
        return _none(f"the hot area covers {hot.sum() / head_area:.0%} of the head: diffuse, not focal")
    _, labels, stats, _ = cv2.connectedComponentsWithStats(hot.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, width, height, area = (int(v) for v in stats[largest])
    mask = labels == largest
    area_mm2 = area * spacing[0] * spacing[1] if spacing else None
    box_mm = (width * spacing[1], height * spacing[0]) if spacing else None
    return Region(True, None, mask, (x, y, width, height), area, area_mm2, box_mm)


def _none(reason: str) -> Region:
    return Region(False, reason, None, None, 0, None, None)
