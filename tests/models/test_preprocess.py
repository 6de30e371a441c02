"""Preprocessing follows the manifest: channels, crop, resize, order, scale, normalisation, layout."""

import numpy as np
import pytest

from models.errors import InvalidImageArray
from models.manifest import ModelManifest
from models.preprocess import preprocess


def test_default_model_tensor_is_nhwc_rgb_over_255(default_manifest: ModelManifest) -> None:
    image = np.zeros((240, 240, 3), np.uint8)
    image[..., 0] = 255
    image[..., 2] = 51
    batch = preprocess(image, default_manifest)
    assert batch.shape == (1, 240, 240, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_grey_is_promoted_and_resized(default_manifest: ModelManifest) -> None:
    batch = preprocess(np.full((480, 360), 102, np.uint8), default_manifest)
    assert batch.shape == (1, 240, 240, 3)
    np.testing.assert_allclose(batch, 0.4, atol=1e-6)
    small = preprocess(np.full((30, 40), 102, np.uint8), default_manifest)  # enlarging path
    np.testing.assert_allclose(small, 0.4, atol=1e-6)


def test_bgr_nchw_mean_std_and_crop(default_manifest: ModelManifest) -> None:
    manifest = default_manifest.model_copy(
        update={
            "channel_order": "BGR",
            "input_layout": "NCHW",
            "input_size": (2, 2),
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.25, 0.5],
            "center_crop": 0.5,
        }
    )
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:6, 2:6] = [255, 0, 0]  # the central half is red; the border would dilute it
    batch = preprocess(image, manifest)
    assert batch.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(batch[0, :, 0, 0], [-1.0, -2.0, 1.0], atol=1e-5)  # B, G, R


def test_colour_to_luminance(default_manifest: ModelManifest) -> None:
    manifest = default_manifest.model_copy(update={"channel_order": "L", "input_size": (4, 4)})
    batch = preprocess(np.full((4, 4, 3), 255, np.uint8), manifest)
    assert batch.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(batch, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_bad_arrays_are_refused(default_manifest: ModelManifest, image: np.ndarray) -> None:
    with pytest.raises(InvalidImageArray):
        preprocess(image, default_manifest)
