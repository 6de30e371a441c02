"""The model-randomisation sanity check for saliency maps, on ONNX initializers.

Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (NeurIPS), section 3: an
explanation that describes the *model* must change when the model's learned weights are
replaced by random ones. Cascading randomisation re-draws the weights layer by layer from
the top (the logits) down; a map that stays the same (high rank correlation with the
original) is explaining the input, not the model. Here a layer is a Conv, Gemm or MatMul
node whose weight is an initializer, with its bias (the node's third input, or the Add
right after a MatMul); it is re-drawn from a normal distribution with the original
tensor's standard deviation, in the same shape.

Rank correlation (Spearman) and SSIM (Wang et al. 2004, computed over the whole map as one
window) compare the original and the randomised maps; both are 1 for identical maps.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from models.cam_ready import make_cam_ready

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2  # Wang et al. 2004, for maps scaled to 0..1


@dataclass(frozen=True)
class WeightLayer:
    """One node with learned weights and the initializers that hold them (weight, bias)."""

    node: str
    op_type: str
    initializers: tuple[str, ...]


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Every Conv/Gemm/MatMul with an initializer weight, in graph (bottom-up) order."""
    graph = model.graph
    stored = {init.name for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in WEIGHT_OPS:
            continue
        names = [name for name in node.input[1:3] if name in stored]
        if not names:
            continue
        if node.op_type == "MatMul":
            names += _matmul_bias(consumers.get(node.output[0], []), stored)
        layers.append(WeightLayer(node=node.name or f"node{index}", op_type=node.op_type, initializers=tuple(names)))
    return layers


def _matmul_bias(consumers: list[onnx.NodeProto], stored: set[str]) -> list[str]:
    """The bias of a MatMul is an initializer added right after it (Keras' Dense, tf2onnx)."""
    if len(consumers) != 1 or consumers[0].op_type != "Add":
        return []
    return [name for name in consumers[0].input if name in stored]


def layers_above(model: onnx.ModelProto, tensor: str) -> list[WeightLayer]:
    """The weight layers that consume ``tensor`` or anything computed from it (the head)."""
    reachable = {tensor}
    above: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if any(name in reachable for name in node.input):
            reachable.update(node.output)
            above.add(node.name or f"node{index}")
    return [layer for layer in weight_layers(model) if layer.node in above]


def randomise_layers(model: onnx.ModelProto, layers: Sequence[WeightLayer], *, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose ``layers`` hold N(0, std of the original) values of the same shape."""
    rng = np.random.default_rng(seed)
    names = [name for layer in layers for name in layer.initializers]
    randomised = onnx.ModelProto()
    randomised.CopyFrom(model)
    initializers = {init.name: init for init in randomised.graph.initializer}
    for name in names:
        original = numpy_helper.to_array(initializers[name])
        scale = float(np.std(original))
        drawn = rng.normal(0.0, scale, original.shape).astype(original.dtype)
        initializers[name].CopyFrom(numpy_helper.from_array(drawn, name=name))
    return randomised


def cascading_randomisation(model: onnx.ModelProto, *, seed: int = 0) -> Iterator[tuple[WeightLayer, onnx.ModelProto]]:
    """Adebayo et al.'s cascade: after each step, every layer from the top down to this one is random."""
    layers = weight_layers(model)
    for depth in range(1, len(layers) + 1):
        top = layers[len(layers) - depth :]
        yield top[0], randomise_layers(model, top, seed=seed)


def randomised_cam_ready(
    model: onnx.ModelProto,
    layers: Sequence[WeightLayer],
    *,
    seed: int = 0,
    cam_layer: str,
    output_name: str,
    output_is_probability: bool = True,
) -> onnx.ModelProto:
    """The CAM-ready form (``models.cam_ready.make_cam_ready``) of ``model`` with ``layers`` randomised."""
    randomised = randomise_layers(model, layers, seed=seed)
    return make_cam_ready(
        randomised, cam_layer=cam_layer, output_name=output_name, output_is_probability=output_is_probability
    )


def spearman(first: npt.ArrayLike, second: npt.ArrayLike) -> float:
    """Spearman rank correlation of two maps (ties get their average rank).

    A constant map has no ranking: two constant maps count as 1 (nothing changed), one
    constant map against a varying one as 0 (the ranking is gone).
    """
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {np.shape(first)} vs {np.shape(second)}")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    return float(np.corrcoef(_average_ranks(a), _average_ranks(b))[0, 1])


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    return np.asarray(average[inverse], dtype=np.float64)


def ssim(first: npt.ArrayLike, second: npt.ArrayLike) -> float:
    """Global SSIM of the two maps after min-max scaling each to 0..1 (a constant map is all zero)."""
    a, b = _unit(first), _unit(second)
    mean_a, mean_b = a.mean(), b.mean()
    covariance = float(np.mean((a - mean_a) * (b - mean_b)))
    numerator = (2 * mean_a * mean_b + _SSIM_C1) * (2 * covariance + _SSIM_C2)
    denominator = (mean_a**2 + mean_b**2 + _SSIM_C1) * (a.var() + b.var() + _SSIM_C2)
    return float(numerator / denominator)


def _unit(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    span = float(np.ptp(array))
    return (array - array.min()) / span if span > 0 else np.zeros_like(array)
