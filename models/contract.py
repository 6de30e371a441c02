"""The model contract, checked once when a model is prepared (DESIGN.md, "The model contract").

Before a model scores anything, its plain and CAM-ready forms run on one seeded random
picture, and the model is refused with ``ModelContractError`` (naming the tensor or
manifest field and the numbers) unless:

1. the CAM layer is rank 4 and its layout is known, so the CAM-ready outputs are NCHW
   (``models.cam_layout``; a traced NHWC layer is transposed by the builder);
2. the output has one class per manifest label (static shape and at run time);
3. an ``output_is_probability`` output is non-negative and sums to 1;
4. the CAM-ready probabilities equal the plain model's, and the CAM-ready activations
   give those probabilities again through the head;
5. the gradients agree with central finite differences of the head (``models.cam_head``).
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper

from models.backward_context import Shape
from models.cam_head import CamHead, class_score
from models.cam_layout import LAYOUTS, NCHW, Permutation, trace_layout
from models.cam_path import default_cam_layer
from models.cam_ready import ACTIVATIONS, GRADIENTS, PROBABILITIES, TARGET_CLASS
from models.errors import ModelContractError
from models.manifest import ModelManifest, file_sha256
from models.preprocess import preprocess

logger = logging.getLogger(__name__)

PROBABILITY_SUM_TOLERANCE = 1e-3  # |sum - 1| of an output_is_probability output
CAM_READY_TOLERANCE = 1e-5  # max |plain - CAM-ready| probability
HEAD_TOLERANCE = 1e-4  # max |probability through the head from the activations - CAM-ready probability|
CHECKS = (
    *("cam_layer_rank", "cam_layer_layout", "label_count", "probability_sum"),
    *("plain_vs_cam_ready", "activations_through_head", "finite_difference_gradients"),
)
_SHAPE_WEIGHT_ELEMENTS = 64  # initializers this small stay for shape inference (Reshape targets); larger become inputs

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True)
class ContractReport:
    """What ``check_model_contract`` checked and measured; every number is within its bound."""

    model: str
    cam_ready_sha256: str
    seed: int
    checks: tuple[str, ...]
    classes: int
    cam_layer_layout: str  # the layer's own layout; the CAM-ready outputs are always NCHW
    activations_shape: tuple[int, ...]
    probability_sum_error: float | None  # None when the output is not a probability
    max_plain_cam_diff: float
    max_head_diff: float
    gradient_relative_error: float
    gradient_precision: str  # "float64" or "float32", the precision the head was evaluated in


def check_model_contract(manifest: ModelManifest, model_path: Path, cam_path: Path, *, seed: int = 0) -> ContractReport:
    """Refuse a model that breaks the contract, before it is ever used; report what was measured."""
    model = onnx.load(str(model_path))
    cam_layer = manifest.cam_layer or default_cam_layer(model, manifest.output_name)
    permutation, layout_name = _check_static(model, manifest, cam_layer)
    rng = np.random.default_rng(seed)
    batch = preprocess(rng.integers(0, 256, (*manifest.input_size, 3), dtype=np.uint8), manifest)
    score = class_score(model.graph, manifest.output_name)
    ends_in_softmax = score != manifest.output_name
    plain, sum_error = _run_plain(manifest, model_path, batch, ends_in_softmax)
    target = int(np.argmax(plain[0]))
    feeds = {manifest.input_name: batch, TARGET_CLASS: np.array([target], dtype=np.int64)}
    probabilities, activations, gradients = _session(cam_path).run([PROBABILITIES, ACTIVATIONS, GRADIENTS], feeds)
    _check_rank(cam_layer, activations.shape, "at run time")
    plain_diff = _check_close(probabilities, plain, CAM_READY_TOLERANCE, "the plain model's output")
    head = CamHead.cut(model, cam_layer, score, permutation, {manifest.input_name: batch})
    scores = head.scores(activations)
    through_head = _softmax(scores) if ends_in_softmax or not manifest.output_is_probability else scores
    head_diff = _check_close(probabilities, through_head, HEAD_TOLERANCE, "the head evaluated at the activations")
    report = ContractReport(
        model=manifest.name,
        cam_ready_sha256=file_sha256(cam_path),
        seed=seed,
        checks=tuple(check for check in CHECKS if check != "probability_sum" or sum_error is not None),
        classes=len(manifest.labels),
        cam_layer_layout=layout_name,
        activations_shape=tuple(int(d) for d in activations.shape),
        probability_sum_error=sum_error,
        max_plain_cam_diff=plain_diff,
        max_head_diff=head_diff,
        gradient_relative_error=head.check_gradients(activations, gradients, target, rng),
        gradient_precision=head.precision.name,
    )
    logger.info("model contract holds", extra={"model": manifest.name, "cam_ready_sha256": report.cam_ready_sha256})
    return report


def _run_plain(
    manifest: ModelManifest, model_path: Path, batch: FloatArray, ends_in_softmax: bool
) -> tuple[FloatArray, float | None]:
    """The plain model's probabilities (soft-maxed as the CAM-ready form does) and their sum error."""
    (output,) = _session(model_path).run([manifest.output_name], {manifest.input_name: batch})
    _check_class_count(manifest, output.shape, "at run time")
    if not manifest.output_is_probability:
        return (output if ends_in_softmax else _softmax(output)), None
    return output, _check_probability_sum(manifest.output_name, output)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_static(model: onnx.ModelProto, manifest: ModelManifest, cam_layer: str) -> tuple[Permutation, str]:
    """Rank, layout and class count from the graph alone, before anything runs."""
    shapes = _static_shapes(model, (cam_layer, manifest.output_name))
    cam_shape, output_shape = shapes[cam_layer], shapes[manifest.output_name]
    if cam_shape is not None:
        _check_rank(cam_layer, cam_shape, "static shape")
    permutation, layout_name = _check_layout(model.graph, manifest, cam_layer)
    if output_shape is not None:
        _check_class_count(manifest, output_shape, "static shape")
    return permutation, layout_name


def _check_rank(cam_layer: str, shape: Shape, where: str) -> None:
    if len(shape) != 4:
        raise ModelContractError(
            f"cam_layer {cam_layer!r} has rank {len(shape)} ({where} {list(shape)}); Grad-CAM needs a rank-4 "
            "NCHW activation: pick the output of a convolutional layer"
        )


def _check_layout(graph: onnx.GraphProto, manifest: ModelManifest, cam_layer: str) -> tuple[Permutation, str]:
    """Known from a convolution, pooling or the declared input; NCHW in the CAM-ready outputs."""
    layout = trace_layout(graph, cam_layer, {manifest.input_name: LAYOUTS[manifest.input_layout]})
    if layout.permutation is None:
        raise ModelContractError(
            f"the layout of cam_layer {cam_layer!r} cannot be traced: the trace stops at {layout.source}; "
            "pick a layer produced by a convolution or pooling, or an element-wise op after one"
        )
    if layout.permutation != NCHW and trace_layout(graph, cam_layer).permutation != layout.permutation:
        raise ModelContractError(
            f"cam_layer {cam_layer!r} is {layout.name}, known only from input_layout {manifest.input_layout!r} "
            f"({layout.source}), so the CAM-ready outputs would not be NCHW; pick a convolutional layer"
        )
    return layout.permutation, layout.name


def _check_class_count(manifest: ModelManifest, shape: Shape, where: str) -> None:
    classes = shape[-1] if shape else None
    if isinstance(classes, int) and classes != len(manifest.labels):
        raise ModelContractError(
            f"output {manifest.output_name!r} has {classes} classes ({where} {list(shape)}), but the manifest "
            f"has {len(manifest.labels)} labels {manifest.labels}"
        )


def _check_probability_sum(output_name: str, output: FloatArray) -> float:
    """output_is_probability: every row non-negative and summing to 1 (NaN fails too)."""
    error = float(np.max(np.abs(output.astype(np.float64).sum(axis=-1) - 1.0)))
    lowest = float(np.min(output))
    if not (error <= PROBABILITY_SUM_TOLERANCE and lowest >= -PROBABILITY_SUM_TOLERANCE):
        raise ModelContractError(
            f"output {output_name!r} sums to 1 within {error:.3g} (minimum {lowest:.3g}) on a random input, but "
            f"output_is_probability is true (tolerance {PROBABILITY_SUM_TOLERANCE}); set it false for logits"
        )
    return error


def _check_close(probabilities: FloatArray, reference: FloatArray, tolerance: float, what: str) -> float:
    diff = float(np.max(np.abs(probabilities.astype(np.float64) - reference)))
    if not diff <= tolerance:
        raise ModelContractError(
            f"the CAM-ready {PROBABILITIES!r} differ from {what} by {diff:.3g} (tolerance {tolerance}); "
            "delete the CAM-ready cache entry and prepare the model again"
        )
    return diff


def _softmax(scores: FloatArray) -> FloatArray:
    shifted = np.exp(scores.astype(np.float64) - scores.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def _static_shapes(model: onnx.ModelProto, names: tuple[str, ...]) -> dict[str, Shape | None]:
    """ONNX shape inference on the graph with its weights turned into typed inputs (fast on large models)."""
    graph = model.graph
    declared = {info.name for info in graph.input}
    small = [init for init in graph.initializer if math.prod(init.dims) <= _SHAPE_WEIGHT_ELEMENTS]
    weights = [
        helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        for init in graph.initializer
        if math.prod(init.dims) > _SHAPE_WEIGHT_ELEMENTS and init.name not in declared
    ]
    skeleton = helper.make_graph(
        list(graph.node), graph.name, [*graph.input, *weights], list(graph.output), small, value_info=graph.value_info
    )
    stripped = helper.make_model(skeleton, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    stripped.functions.extend(model.functions)
    inferred = onnx.shape_inference.infer_shapes(stripped).graph
    infos = {info.name: info for info in (*inferred.input, *inferred.value_info, *inferred.output)}
    return {name: _shape(infos.get(name)) for name in names}


def _shape(info: onnx.ValueInfoProto | None) -> Shape | None:
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)
