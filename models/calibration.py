"""Temperature scaling of a classifier's probabilities (Guo et al. 2017, "On Calibration of
Modern Neural Networks"): softmax(logits / T). A model that outputs probabilities has
logits log(p) up to a per-sample constant, which softmax ignores, so scaling needs no
change to the ONNX graph.

Also here: fitting T by maximum likelihood, the expected calibration error (ECE), the
reliability diagram of Guo et al. (drawn with OpenCV only) and writing a manifest copy
that carries a fitted T.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from models.errors import InvalidManifest
from models.manifest import PACKAGE_PREFIX, ModelManifest
from models.render import encode_png

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_TINY = 1e-12
TEMPERATURE_BOUNDS = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_SEARCH_STEPS = 80  # the bracket shrinks by 0.618 per step: 6 units of log T down to ~1e-16


def apply_temperature(probabilities: npt.ArrayLike, temperature: float) -> FloatArray:
    """Calibrated probabilities, rows summing to 1; ``temperature`` 1 returns the input (renormalised)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _TINY, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return np.asarray(scaled / scaled.sum(axis=-1, keepdims=True), dtype=np.float64)


def check_predictions(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, IntArray]:
    """Validate an (N, K) probability matrix and N integer labels in 0..K-1; N >= 1, K >= 2."""
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (N >= 1, K >= 2), got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if truth.shape != (probs.shape[0],) or not np.issubdtype(truth.dtype, np.integer):
        raise ValueError(f"labels must be {probs.shape[0]} integers, got {truth.dtype} of shape {truth.shape}")
    if truth.min() < 0 or truth.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return probs, truth.astype(np.int64)


def negative_log_likelihood(probabilities: npt.ArrayLike, labels: npt.ArrayLike, temperature: float = 1.0) -> float:
    """Mean -log softmax(log(p) / T)[label], in nats; computed with log-sum-exp, never log(0)."""
    probs, truth = check_predictions(probabilities, labels)
    return _nll(np.log(np.clip(probs, _TINY, None)), truth, temperature)


def _nll(logits: FloatArray, truth: IntArray, temperature: float) -> float:
    scaled = logits / temperature
    peak = scaled.max(axis=1)
    log_norm = peak + np.log(np.exp(scaled - peak[:, None]).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(truth.size), truth]))


def fit_temperature(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The T in ``TEMPERATURE_BOUNDS`` that minimises the NLL of softmax(log(p) / T) (Guo et al. 2017, §4.2).

    Golden-section search on log T (Kiefer 1953), pure numpy and deterministic. The NLL is
    convex in 1/T (a log-sum-exp of logits linear in 1/T), so it is unimodal in log T and
    the search finds the global minimum. A minimum beyond a bound returns that bound
    (e.g. a perfectly separated set wants T -> 0).
    """
    probs, truth = check_predictions(probabilities, labels)
    logits = np.log(np.clip(probs, _TINY, None))
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    nll_low, nll_high = _nll(logits, truth, math.exp(inner_low)), _nll(logits, truth, math.exp(inner_high))
    for _ in range(_SEARCH_STEPS):
        if nll_low <= nll_high:
            high, inner_high, nll_high = inner_high, inner_low, nll_low
            inner_low = high - _GOLDEN * (high - low)
            nll_low = _nll(logits, truth, math.exp(inner_low))
        else:
            low, inner_low, nll_low = inner_low, inner_high, nll_high
            inner_high = low + _GOLDEN * (high - low)
            nll_high = _nll(logits, truth, math.exp(inner_high))
    return math.exp((low + high) / 2.0)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin (lower, upper]; ``accuracy`` and ``confidence`` are None when it is empty."""

    lower: float
    upper: float
    count: int
    accuracy: float | None
    confidence: float | None


def reliability_bins(probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 15) -> tuple[ReliabilityBin, ...]:
    """Guo et al. 2017, §2: confidence = max probability, equal-width bins ((m-1)/M, m/M], per bin
    the accuracy of the argmax and the mean confidence (a confidence of exactly 0 joins the first bin)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    probs, truth = check_predictions(probabilities, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, bins - 1)
    result = []
    for m in range(bins):
        members = index == m
        count = int(members.sum())
        result.append(
            ReliabilityBin(
                lower=float(edges[m]),
                upper=float(edges[m + 1]),
                count=count,
                accuracy=float(correct[members].mean()) if count else None,
                confidence=float(confidence[members].mean()) if count else None,
            )
        )
    return tuple(result)


def calibration_error(bins: Sequence[ReliabilityBin]) -> float:
    """ECE from reliability bins: sum over bins of (count / N) * |accuracy - confidence|."""
    total = sum(b.count for b in bins)
    if total == 0:
        raise ValueError("no samples in the reliability bins")
    weighted_gap = 0.0
    for b in bins:
        if b.accuracy is not None and b.confidence is not None:
            weighted_gap += b.count * abs(b.accuracy - b.confidence)
    return weighted_gap / total


def expected_calibration_error(probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 15) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017, eq. 3) with ``bins`` equal-width bins."""
    return calibration_error(reliability_bins(probabilities, labels, bins))


# The reliability diagram: RGB throughout, PNG-encoded by models.render (the one BGR boundary).
PLOT_WIDTH, PLOT_HEIGHT = 640, 480
BEFORE_RGB = (230, 120, 40)  # orange
AFTER_RGB = (40, 100, 220)  # blue
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, PLOT_WIDTH - 20, 40, PLOT_HEIGHT - 60
_INK, _GRID, _DIAGONAL = (0, 0, 0), (225, 225, 225), (120, 120, 120)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def reliability_plot_png(
    before_bins: Sequence[ReliabilityBin],
    after_bins: Sequence[ReliabilityBin],
    *,
    before_label: str = "before calibration",
    after_label: str = "after calibration",
) -> bytes:
    """A reliability diagram (Guo et al. 2017, fig. 1) as PNG bytes, ``PLOT_WIDTH`` x ``PLOT_HEIGHT``.

    Per non-empty bin, the accuracy as a bar: the left half of the bin before calibration,
    the right half after; the dashed diagonal is perfect calibration. The legend (top left,
    on white, over any bar there) carries each ECE. OpenCV only, so the worker image needs no plotting library.
    """
    canvas = np.full((PLOT_HEIGHT, PLOT_WIDTH, 3), 255, dtype=np.uint8)
    _draw_axes(canvas)
    for bins, color, half in ((before_bins, BEFORE_RGB, 0), (after_bins, AFTER_RGB, 1)):
        for b in bins:
            if b.count and b.accuracy is not None:
                mid = (b.lower + b.upper) / 2.0
                left, right = (b.lower, mid) if half == 0 else (mid, b.upper)
                cv2.rectangle(canvas, (_x(left) + 1, _y(b.accuracy)), (_x(right) - 1, _y(0.0)), color, cv2.FILLED)
    _dashed_line(canvas, (_x(0.0), _y(0.0)), (_x(1.0), _y(1.0)), _DIAGONAL)
    cv2.rectangle(canvas, (_LEFT, _TOP), (_RIGHT, _BOTTOM), _INK, 1)
    legend = [
        (BEFORE_RGB, f"{before_label} (ECE {_ece_text(before_bins)})"),
        (AFTER_RGB, f"{after_label} (ECE {_ece_text(after_bins)})"),
    ]
    cv2.rectangle(canvas, (_LEFT + 4, _TOP + 4), (_LEFT + 300, _TOP + 22 * len(legend) + 30), (255, 255, 255), -1)
    for row, (color, text) in enumerate(legend):
        y = _TOP + 22 + 22 * row
        cv2.rectangle(canvas, (_LEFT + 10, y - 12), (_LEFT + 24, y + 2), color, cv2.FILLED)
        _text(canvas, text, (_LEFT + 32, y), 0.45)
    y = _TOP + 22 + 22 * len(legend) - 5
    _dashed_line(canvas, (_LEFT + 10, y), (_LEFT + 24, y), _DIAGONAL)
    _text(canvas, "perfect calibration", (_LEFT + 32, y + 5), 0.45)
    return encode_png(canvas)


def _x(confidence: float) -> int:
    return round(_LEFT + confidence * (_RIGHT - _LEFT))


def _y(accuracy: float) -> int:
    return round(_BOTTOM - accuracy * (_BOTTOM - _TOP))


def _ece_text(bins: Sequence[ReliabilityBin]) -> str:
    return f"{calibration_error(bins):.3f}" if any(b.count for b in bins) else "n/a"


def _draw_axes(canvas: npt.NDArray[np.uint8]) -> None:
    """Grid, ticks at 0.2 steps, axis labels (the y label rotated) and the title."""
    for step in range(6):
        value = step / 5.0
        cv2.line(canvas, (_x(value), _TOP), (_x(value), _BOTTOM), _GRID, 1)
        cv2.line(canvas, (_LEFT, _y(value)), (_RIGHT, _y(value)), _GRID, 1)
        _text(canvas, f"{value:.1f}", (_x(value) - 12, _BOTTOM + 18), 0.4)
        _text(canvas, f"{value:.1f}", (_LEFT - 32, _y(value) + 4), 0.4)
    _text(canvas, "confidence (max probability)", (_x(0.5) - 110, PLOT_HEIGHT - 20), 0.5)
    _text(canvas, "Reliability diagram", (_x(0.5) - 80, 26), 0.6)
    label = np.full((20, 80, 3), 255, dtype=np.uint8)
    _text(label, "accuracy", (2, 15), 0.5)
    rotated = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    top = (_TOP + _BOTTOM) // 2 - rotated.shape[0] // 2
    canvas[top : top + rotated.shape[0], 8 : 8 + rotated.shape[1]] = rotated


def _text(canvas: npt.NDArray[np.uint8], text: str, origin: tuple[int, int], scale: float) -> None:
    cv2.putText(canvas, text, origin, _FONT, scale, _INK, 1, cv2.LINE_AA)


def _dashed_line(
    canvas: npt.NDArray[np.uint8], start: tuple[int, int], end: tuple[int, int], color: tuple[int, int, int]
) -> None:
    length = math.dist(start, end)
    dashes = max(1, int(length // 8))
    for i in range(0, dashes, 2):
        a, b = i / dashes, min(1.0, (i + 1) / dashes)
        p = (round(start[0] + a * (end[0] - start[0])), round(start[1] + a * (end[1] - start[1])))
        q = (round(start[0] + b * (end[0] - start[0])), round(start[1] + b * (end[1] - start[1])))
        cv2.line(canvas, p, q, color, 1, cv2.LINE_AA)


def write_calibrated_manifest(source: Path, destination: Path, temperature: float) -> None:
    """Copy the manifest JSON at ``source`` to ``destination`` with ``temperature`` set.

    Every other field is kept as written. A relative ``onnx_path`` is made absolute when
    the copy lands in another folder, so the copy still finds its model. The result is
    validated before anything is written (``InvalidManifest`` otherwise).
    """
    raw = json.loads(source.read_text(encoding="utf-8"))
    raw["temperature"] = temperature
    onnx_path = str(raw.get("onnx_path", ""))
    moved = destination.resolve().parent != source.resolve().parent
    if moved and onnx_path and not onnx_path.startswith(PACKAGE_PREFIX) and not Path(onnx_path).is_absolute():
        raw["onnx_path"] = str((source.resolve().parent / onnx_path).resolve())
    try:
        ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidManifest(f"manifest {source} with temperature {temperature}: {exc}") from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
