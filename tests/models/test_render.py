"""Rendering at the original resolution: colours, overlay, outline and PNG bytes."""

import cv2
import numpy as np
import pytest

from models.errors import InvalidImageArray
from models.render import BOX_RGB, encode_png, heatmap_rgb, outline, overlay, resize_map


def _blob_cam(size: int = 240, centre: tuple[int, int] = (60, 170), radius: int = 20) -> np.ndarray:
    """A 0..1 map at model resolution with one disc of ones at (row, col) = centre."""
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    return disc.astype(np.float32)


def test_heatmap_hot_is_red_cold_is_blue() -> None:
    cam = np.array([[0.0, 1.0]], dtype=np.float32)
    heat = heatmap_rgb(cam)
    cold, hot = heat[0, 0].astype(int), heat[0, 1].astype(int)
    assert hot[0] > 100 and hot[0] > hot[2]  # red end
    assert cold[2] > 100 and cold[2] > cold[0]  # blue end


def test_overlay_is_at_original_resolution_and_promotes_grey() -> None:
    image = np.full((300, 480), 128, dtype=np.uint8)
    blended = overlay(image, resize_map(_blob_cam(), (300, 480)), alpha=0.4)
    assert blended.shape == (300, 480, 3) and blended.dtype == np.uint8
    # where the map is zero JET is dark blue (0, 0, 128 in RGB): 0.6 * 128 + 0.4 * heat
    np.testing.assert_allclose(blended[290, 10], [77, 77, 128], atol=2)
    assert blended[75, 340, 0] > blended[75, 340, 2]  # the hot spot turns red


def test_overlay_rejects_bad_alpha() -> None:
    with pytest.raises(InvalidImageArray, match="alpha"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), alpha=1.5)
    with pytest.raises(InvalidImageArray, match="differ in size"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((2, 2), np.float32))


def test_resize_map_is_one_bilinear_step_to_the_original_geometry() -> None:
    cam = np.array([[0.0, 2.0], [4.0, 6.0]], dtype=np.float32)  # raw units, not 0..1
    resized = resize_map(cam, (4, 6))
    assert resized.shape == (4, 6) and resized.dtype == np.float32
    assert resized.max() == pytest.approx(6.0) and resized.min() == pytest.approx(0.0)
    assert resize_map(np.array([[-1.0, 1.0]], np.float32), (1, 4)).min() == 0.0  # overshoot clipped


def test_outline_draws_the_region_and_its_box() -> None:
    image = np.zeros((480, 480, 3), dtype=np.uint8)
    region = resize_map(_blob_cam(centre=(60, 170), radius=20), (480, 480)) >= 0.5
    outlined, box = outline(image, region)
    assert box is not None
    # disc centre (row 60, col 170) radius 20 at 240 px -> centre (120, 340), radius 40 at 480 px
    assert abs(box.x - 300) <= 2 and abs(box.y - 80) <= 2
    assert abs(box.width - 81) <= 3 and abs(box.height - 81) <= 3
    assert outlined.shape == image.shape and outlined[120, 300:303, 1].max() == 255  # the outline is drawn
    for row, col in ((box.y, box.x), (box.y + box.height - 1, box.x + box.width - 1)):
        assert tuple(outlined[row, col]) == BOX_RGB


def test_outline_without_a_region_leaves_the_image_alone() -> None:
    untouched, empty = outline(np.zeros((10, 10), np.uint8), None)
    assert empty is None and untouched.shape == (10, 10, 3) and not untouched.any()
    _, still_empty = outline(np.zeros((10, 10), np.uint8), np.zeros((10, 10), bool))
    assert still_empty is None


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
