"""A region is outlined only when the tumour score, the map's strength and its focality allow."""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import RegionPolicy
from models.regions import find_region, head_mask

POLICY = RegionPolicy(min_tumour_score=0.5, min_strength=0.1, level=0.5, max_head_fraction=0.25)


def phantom(size: int = 200) -> np.ndarray:
    """A bright elliptical head on a black background with a noisy border strip."""
    rows, cols = np.mgrid[:size, :size]
    head = ((rows - size / 2) / (size * 0.4)) ** 2 + ((cols - size / 2) / (size * 0.35)) ** 2 <= 1
    image = (head * 150).astype(np.uint8)
    image[:, :3] = 200  # a bright edge artefact, not connected to the head
    return image


def disc(size: int, centre: tuple[int, int], radius: int, value: float = 1.0) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2) * value).astype(np.float32)


def test_head_mask_is_the_largest_component_with_holes_filled() -> None:
    image = phantom()
    image[95:105, 95:105] = 0  # a dark ventricle inside the head
    mask = head_mask(image)
    assert mask[100, 100]  # the hole is filled
    assert not mask[100, 1]  # the edge artefact is excluded
    assert not mask[5, 100]  # background
    assert 0.3 < mask.mean() < 0.5


def test_a_focal_hot_spot_is_outlined_with_its_size_in_mm() -> None:
    cam = disc(200, (80, 90), 12, 2.0) + 0.05
    region = find_region(cam, head_mask(phantom()), tumour_score=0.9, strength=2.05, policy=POLICY, spacing=(0.5, 0.8))
    assert region.focal and region.reason is None and region.box is not None
    x, y, width, height = region.box
    assert abs(x - 78) <= 1 and abs(y - 68) <= 1 and width == 25 and height == 25
    assert region.area_mm2 == pytest.approx(region.area_px * 0.4)
    assert region.box_mm == pytest.approx((25 * 0.8, 25 * 0.5))


def test_no_region_below_the_tumour_score_or_the_strength() -> None:
    cam = disc(200, (80, 90), 12, 2.0)
    head = head_mask(phantom())
    low_score = find_region(cam, head, tumour_score=0.3, strength=2.0, policy=POLICY, spacing=None)
    assert not low_score.focal and "tumour probability 0.30 is below 0.50" in (low_score.reason or "")
    weak = find_region(cam * 0.01, head, tumour_score=0.9, strength=0.02, policy=POLICY, spacing=None)
    assert not weak.focal and "strength" in (weak.reason or "") and weak.box is None


def test_a_diffuse_map_is_not_focal() -> None:
    cam = np.ones((200, 200), np.float32)  # the whole head is "hot": the map says nothing local
    region = find_region(cam, head_mask(phantom()), tumour_score=0.95, strength=1.0, policy=POLICY, spacing=None)
    assert not region.focal and "diffuse" in (region.reason or "")


def test_a_hot_spot_outside_the_head_is_not_outlined() -> None:
    cam = disc(200, (100, 1), 2, 1.0)  # on the edge artefact only
    region = find_region(cam, head_mask(phantom()), tumour_score=0.95, strength=1.0, policy=POLICY, spacing=None)
    assert not region.focal and "outside the head" in (region.reason or "")
