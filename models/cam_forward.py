"""Forward-only CAMs: Score-CAM and Ablation-CAM, as batched ONNX Runtime runs.

Neither needs a gradient; both weigh each CAM-layer channel by how the class score
changes when the network sees only (Score-CAM) or everything but (Ablation-CAM) that
channel. The weights follow pytorch-grad-cam 1.5 (``score_cam.py``, ``ablation_cam.py``,
``ablation_layer.py``), which the reference tests compare against. The class score is
the one ``models.cam_ready`` differentiates: the logit entering a final Softmax, else the
output itself. Activations are NCHW here; ``ForwardModels`` moves them to and from the
CAM layer's own layout.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from models.cam import Activations, CamMap
from models.cam_head import class_score, head_model
from models.cam_layout import NCHW, Permutation, trace_layout
from models.cam_path import default_cam_layer
from models.errors import ModelContractError

FloatArray = npt.NDArray[np.float32]
DEFAULT_BATCH_SIZE = 32
ABLATION_OFFSET = 1e7  # pytorch-grad-cam's ABLATION_VALUE for layers whose minimum is not zero


def align_corners_bilinear(maps: Activations, size: tuple[int, int]) -> FloatArray:
    """C x h x w maps resized to C x H x W as torch's ``UpsamplingBilinear2d`` (align_corners=True),
    which pytorch-grad-cam's Score-CAM uses: corner pixels map onto corner pixels."""
    rows = _interpolation_matrix(maps.shape[-2], size[0])
    cols = _interpolation_matrix(maps.shape[-1], size[1])
    return np.asarray(rows.astype(np.float32) @ maps @ cols.T.astype(np.float32), dtype=np.float32)


def _interpolation_matrix(source: int, target: int) -> npt.NDArray[np.float64]:
    """target x source linear-interpolation weights with source = target * (n_in - 1) / (n_out - 1)."""
    scale = (source - 1) / (target - 1) if target > 1 else 0.0
    position = np.arange(target) * scale
    low = np.minimum(np.floor(position).astype(int), source - 1)
    high = np.minimum(low + 1, source - 1)
    frac = position - low
    matrix = np.zeros((target, source))
    np.add.at(matrix, (np.arange(target), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(target), high), frac)
    return matrix


def score_cam_masks(acts: Activations, size: tuple[int, int]) -> FloatArray:
    """Wang et al. 2020: each channel upsampled to the input size and min-max scaled to 0..1
    (+1e-8 in the denominator, as pytorch-grad-cam)."""
    upsampled = align_corners_bilinear(acts, size)
    low = upsampled.min(axis=(-2, -1), keepdims=True)
    high = upsampled.max(axis=(-2, -1), keepdims=True)
    return np.asarray((upsampled - low) / (high - low + 1e-8), dtype=np.float32)


def score_cam(acts: Activations, masked_scores: FloatArray) -> CamMap:
    """Score-CAM map from the target's score on each channel-masked input (C values).

    Weights are the softmax over channels of those scores, as pytorch-grad-cam computes them;
    the paper's CIC instead subtracts the baseline score of a blank input and soft-maxes over
    classes, which pytorch-grad-cam (and so Sightline) does not do.
    """
    shifted = np.exp(masked_scores.astype(np.float64) - masked_scores.max())
    weights = shifted / shifted.sum()
    cam = (weights[:, np.newaxis, np.newaxis] * acts).sum(axis=0)
    return np.asarray(np.maximum(cam, 0.0), dtype=np.float32)


def ablation_value(acts: Activations) -> float:
    """What an ablated channel is set to: 0 when the layer's minimum is 0 (after a ReLU, the
    paper's case), else min - 1e7 (pytorch-grad-cam's choice for signed layers). pytorch-grad-cam
    re-reads the minimum after each ablation inside a batch, so its i-th channel of a batch gets
    min - (i + 1) * 1e7; Sightline uses min - 1e7 for every channel (equal to pytorch-grad-cam at
    batch size 1)."""
    low = float(acts.min())
    return 0.0 if low == 0.0 else low - ABLATION_OFFSET


def ablated_batches(acts: Activations, batch_size: int) -> Iterator[FloatArray]:
    """Batches of copies of ``acts`` (C x h x w), copy i with channel i set to ``ablation_value``."""
    value, channels = ablation_value(acts), acts.shape[0]
    for start in range(0, channels, batch_size):
        indices = np.arange(start, min(start + batch_size, channels))
        batch = np.repeat(acts[np.newaxis], len(indices), axis=0)
        batch[np.arange(len(indices)), indices] = value
        yield batch


def ablation_cam(acts: Activations, original_score: float, ablated_scores: FloatArray) -> CamMap:
    """Desai & Ramaswamy 2020: weight_c = (y - y_c) / y, y_c the score with channel c ablated,
    as pytorch-grad-cam computes it (a negative y flips the signs, as there); ReLU of the sum."""
    weights = (original_score - ablated_scores.astype(np.float64)) / original_score
    cam = (weights[:, np.newaxis, np.newaxis] * acts).sum(axis=0)
    return np.asarray(np.maximum(cam, 0.0), dtype=np.float32)


class ForwardModels:
    """The whole model with the class score as its output, and the head (CAM layer to score),
    each an ONNX Runtime session built on first use and kept. ``cam_layer`` None is the layer
    ``models.cam_ready`` picks by default."""

    def __init__(self, model_path: Path, *, cam_layer: str | None, output_name: str, options: ort.SessionOptions):
        self._model_path, self._layer_name, self._output_name = model_path, cam_layer, output_name
        self._cam_layer = cam_layer or ""
        self._options = options
        self._model: onnx.ModelProto | None = None
        self._scorer: ort.InferenceSession | None = None
        self._head: ort.InferenceSession | None = None
        self._score = ""
        self._permutation: Permutation = NCHW

    def _load(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = onnx.load(str(self._model_path))
            self._cam_layer = self._layer_name or default_cam_layer(self._model, self._output_name)
            self._score = class_score(self._model.graph, self._output_name)
            self._permutation = trace_layout(self._model.graph, self._cam_layer).permutation or NCHW
        return self._model

    def _session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), self._options, providers=["CPUExecutionProvider"])

    def masked_scores(self, inputs: Iterator[tuple[str, FloatArray]]) -> FloatArray:
        """Class scores [M, K] of the whole model over batches of (input name, inputs)."""
        if self._scorer is None:
            scorer = onnx.ModelProto()
            scorer.CopyFrom(self._load())
            del scorer.graph.output[:]
            scorer.graph.output.append(helper.make_tensor_value_info(self._score, TensorProto.FLOAT, None))
            self._scorer = self._session(scorer)
        rows = [self._scorer.run([self._score], {name: batch})[0] for name, batch in inputs]
        return np.asarray(np.concatenate(rows), dtype=np.float32)

    def head_scores(self, batches: Iterator[FloatArray]) -> FloatArray:
        """Class scores [M, K] of the head over batches of NCHW CAM-layer activations."""
        if self._head is None:
            head = head_model(self._load(), self._cam_layer, self._score)
            if len(head.graph.input) != 1:
                raise ModelContractError(
                    f"the head after cam_layer {self._cam_layer!r} reads other model inputs; Ablation-CAM "
                    "needs a head that depends on the CAM layer only"
                )
            self._head = self._session(head)
        rows = [
            self._head.run([self._score], {self._cam_layer: np.ascontiguousarray(batch.transpose(self._permutation))})[
                0
            ]
            for batch in batches
        ]
        return np.asarray(np.concatenate(rows), dtype=np.float32)


def masked_inputs(batch: FloatArray, acts: Activations, *, channel_axis: int, batch_size: int) -> Iterator[FloatArray]:
    """The preprocessed input (a batch of one) times each channel's mask, ``batch_size`` channels
    at a time (the masks are made per batch: all 512 of VGG16 at 240x240 would take 118 MB)."""
    size = (batch.shape[2], batch.shape[3]) if channel_axis == 1 else (batch.shape[1], batch.shape[2])
    for start in range(0, len(acts), batch_size):
        masks = np.expand_dims(score_cam_masks(acts[start : start + batch_size], size), axis=channel_axis)
        yield np.ascontiguousarray(batch * masks, dtype=np.float32)
