"""CAM methods on arrays small enough to compute by hand, and the method catalogue."""

from typing import get_args

import numpy as np
import pytest
import torch

from models.cam import (
    CAM_METHODS,
    METHODS,
    eigen_cam,
    grad_cam,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    method_catalogue,
    normalise,
    xgrad_cam,
)
from models.cam_forward import ablated_batches, ablation_cam, ablation_value, align_corners_bilinear, score_cam
from models.manifest import CamMethodName

# Two channels of 2x2 activations and their gradients.
ACTS = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32)
GRADS = np.array([[[1.0, 1.0], [1.0, 1.0]], [[-4.0, 0.0], [0.0, 0.0]]], dtype=np.float32)
GRADS_2 = GRADS.copy()
GRADS_2[1, 0, 1] = -2.0  # channel 1 now has a negative gradient where it is active


def test_grad_cam_weights_channels_by_mean_gradient() -> None:
    # weights: channel 0 -> 1.0, channel 1 -> -1.0; sum: [[1, 1], [2, 4]]
    np.testing.assert_allclose(grad_cam(ACTS, GRADS), [[1.0, 1.0], [2.0, 4.0]])


def test_grad_cam_clips_negative_evidence() -> None:
    np.testing.assert_allclose(grad_cam(ACTS, -GRADS), [[0.0, 0.0], [0.0, 0.0]])


def test_hires_cam_multiplies_elementwise() -> None:
    # channel 0: [[1, 2], [3, 4]]; channel 1: [[0, 0], [0, 0]] (the -4 meets a zero activation)
    np.testing.assert_allclose(hires_cam(ACTS, GRADS), [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(hires_cam(ACTS, GRADS_2), [[1.0, 0.0], [3.0, 4.0]])  # -2 * 1 pulls it to 0


def test_grad_cam_plus_plus_weights_positive_gradients_by_alpha() -> None:
    # one channel A = [1, 3], g = [1, 2], sum(A) = 4: alpha = 1/(2 + 4) and 4/(8 + 32);
    # weight = 1/6 + 2/10 = 11/30 (Grad-CAM's would be 1.5)
    acts, grads = np.array([[[1.0, 3.0]]], np.float32), np.array([[[1.0, 2.0]]], np.float32)
    np.testing.assert_allclose(grad_cam_plus_plus(acts, grads), [[11 / 30, 33 / 30]], rtol=1e-5)
    # channel 0: alpha = 1/12 at each of 4 positions -> weight 1/3; channel 1 has no positive gradient
    np.testing.assert_allclose(grad_cam_plus_plus(ACTS, GRADS_2), np.array([[1.0, 2.0], [3.0, 4.0]]) / 3, rtol=1e-5)


def test_xgrad_cam_normalises_by_the_activation_sum() -> None:
    # channel 0: sum(g A) / sum(A) = 10/10; channel 1: (-2 * 1) / 2 = -1 -> [[1, 2], [3, 4]] - [[0, 1], [1, 0]]
    np.testing.assert_allclose(xgrad_cam(ACTS, GRADS_2), [[1.0, 1.0], [2.0, 4.0]], rtol=1e-6)


def test_layer_cam_keeps_only_positive_gradients() -> None:
    np.testing.assert_allclose(layer_cam(ACTS, GRADS_2), [[1.0, 2.0], [3.0, 4.0]])
    # flipped: channel 0's gradients are negative, channel 1's +2 meets activation 1
    np.testing.assert_allclose(layer_cam(ACTS, -GRADS_2), [[0.0, 2.0], [0.0, 0.0]])


def test_eigen_cam_projects_on_the_first_component_with_a_fixed_sign() -> None:
    # positions of one channel [1, 2, 3, 6] centred: [-2, -1, 0, 3]; component +1 (never LAPACK's -1)
    one = np.array([[[1.0, 2.0], [3.0, 6.0]]], np.float32)
    np.testing.assert_allclose(eigen_cam(one), [[0.0, 0.0], [0.0, 3.0]], atol=1e-5)
    # channel 1 = 2 x channel 0: component [1, 2]/sqrt(5), projection sqrt(5) x centred channel 0
    two = np.concatenate([one, 2 * one])
    np.testing.assert_allclose(eigen_cam(two, GRADS), [[0.0, 0.0], [0.0, 3 * np.sqrt(5.0)]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eigen_cam(np.stack([two * 0, two]))[1], eigen_cam(two), atol=1e-6)


def test_methods_work_on_a_batch_axis() -> None:
    batch_acts, batch_grads = np.stack([ACTS, ACTS]), np.stack([GRADS_2, -GRADS_2])
    for method in METHODS.values():
        cams = method(batch_acts, batch_grads)
        np.testing.assert_allclose(cams[0], method(ACTS, GRADS_2), atol=1e-6)
        np.testing.assert_allclose(cams[1], method(ACTS, -GRADS_2), atol=1e-6)


def test_normalise_min_max_and_empty_map() -> None:
    np.testing.assert_allclose(normalise(np.array([[1.0, 2.0], [2.0, 5.0]])), [[0.0, 0.25], [0.25, 1.0]])
    zero = normalise(np.zeros((3, 3)))
    assert zero.dtype == np.float32 and not zero.any()
    assert not normalise(np.full((2, 2), 7.0)).any()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_holds_methods(name: str) -> None:
    cam = METHODS[name](ACTS, GRADS_2)
    assert cam.dtype == np.float32 and cam.shape == (2, 2) and cam.min() >= 0.0


def test_align_corners_bilinear_matches_torch_upsampling() -> None:
    maps = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    expected = torch.nn.UpsamplingBilinear2d(size=(17, 9))(torch.from_numpy(maps)[None])[0].numpy()
    np.testing.assert_allclose(align_corners_bilinear(maps, (17, 9)), expected, atol=1e-5)


def test_score_cam_weights_are_a_softmax_over_channels() -> None:
    # scores [0, ln 3]: weights 1/4 and 3/4
    np.testing.assert_allclose(score_cam(ACTS, np.array([0.0, np.log(3.0)], np.float32)), [[0.25, 1.25], [1.5, 1.0]])


def test_ablation_zeroes_each_channel_after_a_relu_and_goes_below_the_minimum_otherwise() -> None:
    assert ablation_value(ACTS) == 0.0 and ablation_value(ACTS + 1.0) == 1.0 - 1e7
    batches = list(ablated_batches(ACTS, batch_size=1))
    assert len(batches) == 2 and not batches[0][0, 0].any() and not batches[1][0, 1].any()
    np.testing.assert_array_equal(batches[0][0, 1], ACTS[1])
    np.testing.assert_array_equal(np.concatenate(batches), next(ablated_batches(ACTS, batch_size=8)))


def test_ablation_cam_weights_are_the_relative_score_drop() -> None:
    # score 2; ablating channel 0 -> 1 (weight 0.5), channel 1 -> 3 (weight -0.5)
    np.testing.assert_allclose(ablation_cam(ACTS, 2.0, np.array([1.0, 3.0], np.float32)), [[0.5, 0.5], [1.0, 2.0]])


def test_catalogue_lists_every_manifest_method_once() -> None:
    catalogue = method_catalogue()
    assert [entry["id"] for entry in catalogue] == list(get_args(CamMethodName))
    for entry in catalogue:
        assert set(entry) == {"id", "title", "paper", "kind", "description"} and all(entry.values())
    kinds = {info.id: info.kind for info in CAM_METHODS.values()}
    assert {method for method, kind in kinds.items() if kind in ("gradient", "activation")} == set(METHODS)
    assert kinds["scorecam"] == kinds["ablationcam"] == "forward" and kinds["guidedgradcam"] == "guided"
