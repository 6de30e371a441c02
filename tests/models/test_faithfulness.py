"""Faithfulness and localisation metrics on hand-made maps, masks and a model whose evidence is known."""

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import faithfulness as fm

SIZE = 64


def square_mask(top: int, left: int, side: int = 8) -> npt.NDArray[np.bool_]:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def peak_at(y: int, x: int) -> fm.FloatArray:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / 8.0)


def test_pointing_game_hits_inside_and_misses_far_outside() -> None:
    mask = square_mask(10, 40)
    assert fm.pointing_game(peak_at(14, 44), mask)
    assert not fm.pointing_game(peak_at(50, 10), mask)


def test_pointing_game_tolerance_is_15_px_at_224_scaled() -> None:
    mask = square_mask(10, 40)
    assert fm.pointing_tolerance((224, 224)) == 15.0
    assert fm.pointing_tolerance((SIZE, SIZE)) == pytest.approx(15 * 64 / 224)
    assert fm.pointing_game(peak_at(14, 51), mask)  # 4 px right of the mask, tolerance 4.29 px
    assert not fm.pointing_game(peak_at(14, 53), mask)  # 6 px right
    assert fm.pointing_game(peak_at(14, 53), mask, tolerance=6.0)


def test_pointing_game_constant_map_and_empty_mask_are_misses() -> None:
    assert not fm.pointing_game(np.zeros((SIZE, SIZE)), square_mask(0, 0))
    assert not fm.pointing_game(peak_at(4, 4), np.zeros((SIZE, SIZE), dtype=bool))


def test_energy_pointing_game_is_the_share_of_the_map_inside() -> None:
    mask = square_mask(0, 0, side=SIZE // 2)
    assert fm.energy_pointing_game(mask.astype(float), mask) == 1.0
    assert fm.energy_pointing_game((~mask).astype(float), mask) == 0.0
    assert fm.energy_pointing_game(np.ones((SIZE, SIZE)), mask) == pytest.approx(0.25)
    assert fm.energy_pointing_game(np.zeros((SIZE, SIZE)), mask) == 0.0


def test_iou_of_the_thresholded_map() -> None:
    mask = square_mask(20, 20)
    assert fm.iou(mask * 0.9 + 0.05, mask) == 1.0  # 0.95 inside, 0.05 outside: level 0.5 selects the mask
    assert fm.iou(square_mask(40, 40).astype(float), mask) == 0.0
    half = square_mask(20, 24).astype(float)  # overlaps 8 x 4 of 8 x 8, union 8 x 12
    assert fm.iou(half, mask) == pytest.approx(32 / 96)
    assert fm.iou(np.zeros((SIZE, SIZE)), mask) == 0.0


def test_centre_prior_points_at_the_centre_only() -> None:
    prior = fm.centre_prior((SIZE, SIZE))
    assert np.unravel_index(np.argmax(prior), prior.shape) in {(31, 31), (31, 32), (32, 31), (32, 32)}
    assert fm.pointing_game(prior, square_mask(28, 28))
    assert not fm.pointing_game(prior, square_mask(2, 2))
    assert fm.energy_pointing_game(prior, square_mask(28, 28)) > 5 * fm.energy_pointing_game(prior, square_mask(2, 2))


def test_metrics_refuse_maps_and_masks_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="same 2-D shape"):
        fm.iou(np.ones((8, 8)), np.ones((8, 9), dtype=bool))


def test_upsample_matches_opencv_bilinear() -> None:
    cam = np.random.default_rng(0).random((7, 5)).astype(np.float32)
    expected = cv2.resize(cam, (40, 56), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(fm.upsample(cam, (56, 40)), expected, atol=1e-5)


def test_gaussian_blur_keeps_the_mean_and_smooths() -> None:
    noise = np.random.default_rng(1).normal(100.0, 20.0, (32, 32))
    blurred = fm.gaussian_blur(noise, 2.0)
    assert blurred.mean() == pytest.approx(noise.mean(), rel=0.01)
    assert blurred.std() < noise.std() / 3
    np.testing.assert_allclose(fm.gaussian_blur(np.full((9, 9), 7.0), 1.5), 7.0)


def test_curve_area() -> None:
    fractions = np.linspace(0, 1, 5)
    assert fm.Curve(fractions, np.ones(5)).auc == pytest.approx(1.0)
    assert fm.Curve(fractions, 1 - fractions).auc == pytest.approx(0.5)


def test_saliency_order_is_descending_with_ties_in_raster_order() -> None:
    assert fm.saliency_order(np.array([[0.1, 0.9], [0.9, 0.0]])).tolist() == [1, 2, 0, 3]


# A model whose evidence is known: score = mean of every 4th pixel of every 4th row / 255 (isolated
# pixels, so that the insertion canvas's blur erases them).
EVIDENCE = np.zeros((16, 16), dtype=np.float32)
EVIDENCE[::4, ::4] = 1.0


def evidence_score() -> fm.ScoreFn:
    weights = numpy_helper.from_array(EVIDENCE / (EVIDENCE.sum() * 255.0), name="w")
    axes = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), name="axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axes"], ["score"], keepdims=0),
        ],
        "evidence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=[weights, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda images: session.run(["score"], {"x": images.astype(np.float32)})[0]


def evidence_image() -> npt.NDArray[np.uint8]:
    image = np.full((16, 16), 40, dtype=np.uint8)
    image[::4, ::4] = 250
    return image


def test_deletion_auc_is_low_for_the_true_evidence_and_high_for_its_opposite() -> None:
    score, image = evidence_score(), evidence_image()
    perfect = fm.deletion_curve(image, EVIDENCE, score, steps=16)
    anti = fm.deletion_curve(image, 1.0 - EVIDENCE, score, steps=16)
    assert perfect.scores[0] == pytest.approx(250 / 255)
    assert perfect.scores[1] == pytest.approx(round(image.mean()) / 255)  # the evidence is gone after 1/16
    assert perfect.auc < 0.3 < 0.8 < anti.auc


def test_insertion_auc_is_high_for_the_true_evidence_and_low_for_its_opposite() -> None:
    score, image = evidence_score(), evidence_image()
    perfect = fm.insertion_curve(image, EVIDENCE, score, steps=16)
    anti = fm.insertion_curve(image, 1.0 - EVIDENCE, score, steps=16)
    assert perfect.scores[-1] == anti.scores[-1] == pytest.approx(250 / 255)
    assert perfect.scores[0] < 0.5  # the blurred canvas has lost the evidence
    assert perfect.auc > 0.9 > 0.5 > anti.auc


def test_curves_refuse_a_map_of_another_size_and_zero_steps() -> None:
    score, image = evidence_score(), evidence_image()
    with pytest.raises(ValueError, match="saliency has shape"):
        fm.deletion_curve(image, np.ones((4, 4)), score)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fm.insertion_curve(image, EVIDENCE, score, steps=0)


def test_curves_work_on_rgb_images() -> None:
    rgb = np.repeat(evidence_image()[:, :, np.newaxis], 3, axis=2)
    seen: list[tuple[int, ...]] = []

    def red_evidence(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        seen.append(images.shape)
        return np.asarray(images[:, ::4, ::4, 0].mean(axis=(1, 2)) / 255.0)

    curve = fm.deletion_curve(rgb, EVIDENCE, red_evidence, steps=16)
    assert seen == [(17, 16, 16, 3)]
    assert curve.scores[1] == pytest.approx(round(rgb.mean()) / 255)
