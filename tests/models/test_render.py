"""Rendering at the original resolution: colours, overlay, outline and PNG bytes."""

import cv2
import numpy as np
import pytest

from models.errors import InvalidImageArray
from models.render import BOX_RGB, BoundingBox, contour, encode_png, heatmap_rgb, overlay


def _blob_cam(size: int = 240, centre: tuple[int, int] = (60, 170), radius: int = 20) -> np.ndarray:
    """A 0..1 map at model resolution with one disc of ones at (row, col) = centre."""
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    return disc.astype(np.float32)


def test_heatmap_hot_is_red_cold_is_blue() -> None:
    cam = np.array([[0.0, 1.0]], dtype=np.float32)
    heat = heatmap_rgb(cam, size=(1, 2))
    cold, hot = heat[0, 0].astype(int), heat[0, 1].astype(int)
    assert hot[0] > 100 and hot[0] > hot[2]  # red end
    assert cold[2] > 100 and cold[2] > cold[0]  # blue end


def test_overlay_is_at_original_resolution_and_promotes_grey() -> None:
    image = np.full((300, 480), 128, dtype=np.uint8)
    blended = overlay(image, _blob_cam(), alpha=0.4)
    assert blended.shape == (300, 480, 3) and blended.dtype == np.uint8
    # where the map is zero JET is dark blue (0, 0, 128 in RGB): 0.6 * 128 + 0.4 * heat
    np.testing.assert_allclose(blended[290, 10], [77, 77, 128], atol=2)
    assert blended[75, 340, 0] > blended[75, 340, 2]  # the hot spot turns red


def test_overlay_rejects_bad_alpha() -> None:
    with pytest.raises(InvalidImageArray, match="alpha"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((2, 2), np.float32), alpha=1.5)


def test_contour_box_sits_on_the_hot_spot() -> None:
    image = np.zeros((480, 480, 3), dtype=np.uint8)  # twice the model resolution
    outlined, box = contour(image, _blob_cam(centre=(60, 170), radius=20), threshold=0.5)
    assert box is not None
    # disc centre (row 60, col 170) radius 20 at 240 px -> centre (120, 340), radius 40 at 480 px
    assert abs(box.x - 300) <= 2 and abs(box.y - 80) <= 2
    assert abs(box.width - 81) <= 3 and abs(box.height - 81) <= 3
    assert outlined.shape == image.shape and outlined[120, 300:303, 1].max() == 255  # the outline is drawn
    # the box's corners (outside the round outline) carry the box colour
    for row, col in ((box.y, box.x), (box.y + box.height - 1, box.x + box.width - 1)):
        assert tuple(outlined[row, col]) == BOX_RGB


def test_contour_picks_the_largest_region_and_none_when_empty() -> None:
    cam = _blob_cam(centre=(60, 60), radius=5) + _blob_cam(centre=(180, 180), radius=30)
    _, box = contour(np.zeros((240, 240), np.uint8), cam)
    assert box == BoundingBox(x=150, y=150, width=61, height=61)
    untouched, empty = contour(np.zeros((10, 10), np.uint8), np.zeros((4, 4), np.float32))
    assert empty is None and untouched.shape == (10, 10, 3) and not untouched.any()


def test_png_round_trip_keeps_rgb_order() -> None:
    image = np.zeros((5, 7, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red in RGB
    decoded = cv2.imdecode(np.frombuffer(encode_png(image), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), image)
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    grey_back = cv2.imdecode(np.frombuffer(encode_png(grey), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(grey_back, grey)


def test_png_refuses_float_pixels() -> None:
    with pytest.raises(InvalidImageArray, match="uint8"):
        encode_png(np.zeros((2, 2), np.float32))  # type: ignore[arg-type]
