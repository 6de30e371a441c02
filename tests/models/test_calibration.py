"""Temperature scaling, ECE and the reliability diagram: values on synthetic sets with known answers."""

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from models.calibration import (
    AFTER_RGB,
    BEFORE_RGB,
    PLOT_HEIGHT,
    PLOT_WIDTH,
    TEMPERATURE_BOUNDS,
    apply_temperature,
    calibration_error,
    check_predictions,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    reliability_plot_png,
    write_calibrated_manifest,
)
from models.errors import InvalidManifest
from models.manifest import load_manifest
from models.registry import default_manifest_path

FloatArray = npt.NDArray[np.float64]


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def _overconfident_set(t_true: float, n: int = 30_000, seed: int = 7) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Labels drawn from softmax(z), reported probabilities softmax(z * t_true): T = t_true undoes it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, 4))
    truth = _softmax(logits)
    labels = (rng.random(n)[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    return _softmax(logits * t_true), labels.astype(np.int64)


def _calibrated_binary(n: int = 100_000, seed: int = 3) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Confidence c uniform on [0.5, 1], class 0 drawn with probability c: calibrated by construction."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    labels = (rng.random(n) >= confidence).astype(np.int64)
    return np.column_stack([confidence, 1.0 - confidence]), labels


def test_apply_temperature_one_is_identity_and_large_t_flattens() -> None:
    probs = np.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-12)
    np.testing.assert_allclose(apply_temperature(probs, 1e6), np.full((1, 3), 1 / 3), atol=1e-5)
    # T = 2: p_i^(1/2) renormalised
    root = np.sqrt(probs)
    np.testing.assert_allclose(apply_temperature(probs, 2.0), root / root.sum(), atol=1e-12)
    with pytest.raises(ValueError, match="temperature must be positive"):
        apply_temperature(probs, 0.0)


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_the_true_temperature(t_true: float) -> None:
    probs, labels = _overconfident_set(t_true)
    fitted = fit_temperature(probs, labels)
    assert abs(fitted - t_true) / t_true < 0.05
    assert fit_temperature(probs, labels) == fitted  # deterministic


def test_fit_temperature_stops_at_the_bounds() -> None:
    # every argmax right: the likelihood keeps rising as T -> 0
    separable = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert fit_temperature(separable, np.array([0, 1, 0])) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-6)
    # every argmax wrong: the best is the flattest
    assert fit_temperature(separable, np.array([1, 0, 1])) == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-6)


def test_calibration_lowers_nll_and_ece() -> None:
    probs, labels = _overconfident_set(2.5, n=20_000, seed=11)
    fitted = fit_temperature(probs, labels)
    calibrated = apply_temperature(probs, fitted)
    assert negative_log_likelihood(probs, labels, fitted) < negative_log_likelihood(probs, labels) - 0.1
    assert negative_log_likelihood(calibrated, labels) == pytest.approx(negative_log_likelihood(probs, labels, fitted))
    before, after = expected_calibration_error(probs, labels), expected_calibration_error(calibrated, labels)
    assert before > 0.1
    assert after < 0.02


def test_nll_by_hand() -> None:
    probs = np.array([[0.5, 0.5], [0.8, 0.2]])
    assert negative_log_likelihood(probs, np.array([0, 1])) == pytest.approx((np.log(2) - np.log(0.2)) / 2)


def test_ece_of_a_calibrated_set_is_near_zero() -> None:
    probs, labels = _calibrated_binary()
    assert expected_calibration_error(probs, labels) < 0.01


def test_ece_of_an_overconfident_set_equals_the_hand_computed_value() -> None:
    # 4 samples at confidence 0.95, 2 right (gap 0.45); 6 at 0.7, 3 right (gap 0.2)
    probs = np.array([[0.95, 0.05]] * 4 + [[0.3, 0.7]] * 6)
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4 * 0.45 + 0.6 * 0.2)
    bins = reliability_bins(probs, labels, bins=10)
    filled = [(b.lower, b.upper, b.count, b.accuracy, b.confidence) for b in bins if b.count]
    assert filled == [
        (pytest.approx(0.6), pytest.approx(0.7), 6, 0.5, pytest.approx(0.7)),
        (pytest.approx(0.9), pytest.approx(1.0), 4, 0.5, pytest.approx(0.95)),
    ]
    assert all(b.accuracy is None and b.confidence is None for b in bins if not b.count)
    assert calibration_error(bins) == pytest.approx(0.3)


def test_reliability_bins_are_right_closed() -> None:
    probs = np.array([[0.2, 0.8], [0.5, 0.5], [0.0, 0.0]])
    bins = reliability_bins(probs, np.array([1, 0, 0]), bins=5)
    assert [b.count for b in bins] == [1, 0, 1, 1, 0]  # 0.0 joins the first bin; 0.5 in (0.4, 0.6], 0.8 in (0.6, 0.8]
    with pytest.raises(ValueError, match="bins must be at least 1"):
        reliability_bins(probs, np.array([1, 0, 0]), bins=0)
    with pytest.raises(ValueError, match="no samples"):
        calibration_error(())


@pytest.mark.parametrize(
    ("probabilities", "labels", "message"),
    [
        (np.ones((3,)), np.array([0, 1, 0]), "must be \\(N >= 1, K >= 2\\)"),
        (np.ones((0, 2)), np.array([], dtype=np.int64), "must be \\(N >= 1, K >= 2\\)"),
        (np.array([[0.5, np.nan]]), np.array([0]), "finite and non-negative"),
        (np.array([[1.5, -0.5]]), np.array([0]), "finite and non-negative"),
        (np.array([[0.5, 0.5]]), np.array([0.0]), "must be 1 integers"),
        (np.array([[0.5, 0.5]]), np.array([0, 1]), "must be 1 integers"),
        (np.array([[0.5, 0.5]]), np.array([2]), "must lie in 0..1"),
    ],
)
def test_predictions_are_validated(probabilities: FloatArray, labels: FloatArray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_predictions(probabilities, labels)


def _bar_height(png: bytes, rgb: tuple[int, int, int]) -> int:
    """The tallest run of ``rgb`` pixels in any column (legend swatches are 15 px)."""
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return int(np.all(bgr == rgb[::-1], axis=2).sum(axis=0).max())


def test_reliability_plot_draws_bars_in_proportion_to_accuracy() -> None:
    before = reliability_bins(np.array([[0.95, 0.05]] * 4), np.array([0, 0, 0, 0]))  # accuracy 1.0, top bin
    after = reliability_bins(np.array([[0.97, 0.03]] * 4), np.array([0, 0, 1, 1]))  # accuracy 0.5, same bin
    png = reliability_plot_png(before, after)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (PLOT_HEIGHT, PLOT_WIDTH, 3)
    assert (image < 250).any(axis=2).mean() > 0.05  # not blank: axes, grid, text, bars
    before_bar, after_bar = _bar_height(png, BEFORE_RGB), _bar_height(png, AFTER_RGB)
    assert after_bar > 100
    assert before_bar / after_bar == pytest.approx(2.0, rel=0.03)
    empty = tuple(replace(b, count=0, accuracy=None, confidence=None) for b in before)
    legend_only = reliability_plot_png(empty, empty)
    assert _bar_height(legend_only, BEFORE_RGB) == _bar_height(legend_only, AFTER_RGB) == 15  # swatches, no bars


def test_write_calibrated_manifest_keeps_everything_but_the_temperature(tmp_path: Path) -> None:
    target = tmp_path / "deploy" / "calibrated.json"
    write_calibrated_manifest(default_manifest_path(), target, 1.8)
    original = load_manifest(default_manifest_path())
    assert load_manifest(target) == original.model_copy(update={"temperature": 1.8})


def test_write_calibrated_manifest_makes_a_relative_model_path_absolute_when_moved(tmp_path: Path) -> None:
    raw = json.loads(default_manifest_path().read_text())
    source_dir = tmp_path / "models"
    source_dir.mkdir()
    (source_dir / "model.onnx").write_bytes(b"onnx")
    source = source_dir / "local.json"
    source.write_text(json.dumps({**raw, "onnx_path": "model.onnx"}))
    moved, in_place = tmp_path / "elsewhere" / "local.json", source_dir / "calibrated.json"
    write_calibrated_manifest(source, moved, 0.75)
    write_calibrated_manifest(source, in_place, 0.75)
    model_file = str((source_dir / "model.onnx").resolve())
    assert json.loads(moved.read_text())["onnx_path"] == model_file
    assert json.loads(in_place.read_text())["onnx_path"] == "model.onnx"
    assert load_manifest(moved).onnx_path == load_manifest(in_place).onnx_path == model_file
    assert load_manifest(moved).temperature == 0.75


def test_write_calibrated_manifest_refuses_an_invalid_temperature(tmp_path: Path) -> None:
    target = tmp_path / "bad.json"
    with pytest.raises(InvalidManifest, match=r"temperature 0\.0"):
        write_calibrated_manifest(default_manifest_path(), target, 0.0)
    assert not target.exists()
