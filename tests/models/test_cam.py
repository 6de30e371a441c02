"""CAM methods on arrays small enough to compute by hand."""

import numpy as np
import pytest

from models.cam import METHODS, grad_cam, hires_cam, normalise

# Two channels of 2x2 activations and their gradients.
ACTS = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32)
GRADS = np.array([[[1.0, 1.0], [1.0, 1.0]], [[-4.0, 0.0], [0.0, 0.0]]], dtype=np.float32)


def test_grad_cam_weights_channels_by_mean_gradient() -> None:
    # weights: channel 0 -> 1.0, channel 1 -> -1.0; sum: [[1, 1], [2, 4]]
    np.testing.assert_allclose(grad_cam(ACTS, GRADS), [[1.0, 1.0], [2.0, 4.0]])


def test_grad_cam_clips_negative_evidence() -> None:
    np.testing.assert_allclose(grad_cam(ACTS, -GRADS), [[0.0, 0.0], [0.0, 0.0]])


def test_hires_cam_multiplies_elementwise() -> None:
    # channel 0: [[1, 2], [3, 4]]; channel 1: [[0, 0], [0, 0]] (the -4 meets a zero activation)
    np.testing.assert_allclose(hires_cam(ACTS, GRADS), [[1.0, 2.0], [3.0, 4.0]])
    flipped = GRADS.copy()
    flipped[1, 0, 1] = -5.0  # -5 * 1 pulls the top-right pixel below zero
    np.testing.assert_allclose(hires_cam(ACTS, flipped), [[1.0, 0.0], [3.0, 4.0]])


def test_methods_work_on_a_batch_axis() -> None:
    batch_acts, batch_grads = np.stack([ACTS, ACTS]), np.stack([GRADS, -GRADS])
    cams = grad_cam(batch_acts, batch_grads)
    np.testing.assert_allclose(cams[0], [[1.0, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(cams[1], 0.0)


def test_normalise_min_max_and_empty_map() -> None:
    np.testing.assert_allclose(normalise(np.array([[1.0, 2.0], [2.0, 5.0]])), [[0.0, 0.25], [0.25, 1.0]])
    zero = normalise(np.zeros((3, 3)))
    assert zero.dtype == np.float32 and not zero.any()
    assert not normalise(np.full((2, 2), 7.0)).any()


@pytest.mark.parametrize("name", ["gradcam", "hirescam"])
def test_registry_holds_methods(name: str) -> None:
    assert METHODS[name](ACTS, GRADS).dtype == np.float32
