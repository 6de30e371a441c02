"""Turn a classifier into its CAM-ready form: probabilities, activations and exact gradients.

Grad-CAM (Selvaraju et al. 2017) needs d y^c / d A, the gradient of the pre-softmax class
score with respect to a convolutional activation. Instead of a training framework we emit
the backward pass of the head (the nodes between the CAM layer and the score) as ONNX
nodes, so one ONNX Runtime call returns everything. Inputs gain ``target_class`` [N]
(int64, -1 = the predicted class); outputs become ``probabilities`` [N, K],
``activations`` and ``gradients`` (both NCHW: a CAM layer of another known layout,
such as NHWC in tf2onnx exports, is transposed; see ``models.cam_layout``). Optionally
``input_gradients`` (plain or guided backpropagation, Springenberg et al. 2015) and several
targets per image (``multi_target``: the head re-run on tiled activations,
``models.cam_targets``). LSTM/GRU nodes are unrolled first (``models.backward_rnn``).
"""

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper

from models.backward_context import BackwardContext, Shape, attr
from models.backward_ops import BACKWARD_OPS, MULTI_OUTPUT_OPS, SUPPORTED_OPS
from models.backward_rnn import lower_recurrent
from models.cam_layout import NCHW, trace_layout
from models.cam_path import (
    default_cam_layer,
    differentiable_tensors,
    graph_constants,
    model_input,
    path_nodes,
    static_shapes,
    unit_batch_shapes,
)
from models.cam_targets import flat_targets, per_image, tiled_head
from models.errors import ModelContractError, UnsupportedCamOp
from models.manifest import verify_model_file

logger = logging.getLogger(__name__)

CAM_READY_VERSION = "v1"
BUILDER_SOURCES = (
    *("backward_activations.py", "backward_context.py", "backward_conv.py", "backward_ops.py", "backward_pool.py"),
    *("backward_reduce.py", "backward_rnn.py", "backward_shape.py", "cam_layout.py", "cam_path.py", "cam_ready.py"),
    "cam_targets.py",
)
TARGET_CLASS = "target_class"
PREDICTED_TARGET = -1  # target_class value: explain the predicted class
TUMOUR_TARGET = -2  # target_class value: explain the most likely tumour class
PROBABILITIES = "probabilities"
ACTIVATIONS = "activations"
GRADIENTS = "gradients"
INPUT_GRADIENTS = "input_gradients"
InputGradients = Literal["none", "plain", "guided"]
_PREFIX = "camready/"  # every tensor and node the builder adds (BackwardContext.fresh)
MIN_OPSET = 16  # ScatterElements(reduction="add") for the MaxPool gradient
__all__ = ["cam_ready_path", "default_cam_layer", "make_cam_ready"]


def make_cam_ready(
    model: onnx.ModelProto,
    *,
    cam_layer: str | None = None,
    output_name: str,
    output_is_probability: bool = True,
    tumour_classes: Sequence[int] = (),
    input_gradients: InputGradients = "none",
    multi_target: bool = False,
) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are probabilities, activations and their gradients.

    ``target_class`` -1 explains the predicted class; -2 the most likely of
    ``tumour_classes`` (so a "no tumour" prediction still gets the map of where a tumour
    would be, in the same single run). ``cam_layer`` None picks ``default_cam_layer``.

    When ``output_name`` is produced by a Softmax the score is its input (the logit);
    otherwise the output itself is differentiated, and it is soft-maxed for
    ``probabilities`` unless ``output_is_probability``.

    ``input_gradients`` "plain" or "guided" adds ``input_gradients``, d score / d input
    (guided: Springenberg et al. 2015, every Relu passes only positive gradients).
    ``multi_target``: ``target_class`` is [N, T] and ``gradients`` [N, T, C, H, W].
    """
    if multi_target and input_gradients != "none":
        raise ModelContractError("multi_target and input_gradients cannot be combined; build two CAM-ready models")
    cam_model = onnx.ModelProto()
    cam_model.CopyFrom(model)
    _bump_opset(cam_model)
    graph = cam_model.graph
    cam_layer = cam_layer or default_cam_layer(model, output_name)
    producers = {out: node for node in graph.node for out in node.output}
    for tensor, role in ((cam_layer, "cam_layer"), (output_name, "output_name")):
        if tensor not in producers:
            raise ModelContractError(f"{role} {tensor!r} is not produced by any node of the model")
    _check_reserved_names(graph, input_gradients != "none")
    shapes = _lowered_shapes(cam_model)
    producers = {out: node for node in graph.node for out in node.output}
    _check_class_score(producers[output_name], shapes)
    score, probabilities = _score_and_probabilities(graph, producers[output_name], output_is_probability)
    _check_output_names(graph, probabilities=probabilities, activations=cam_layer)
    ctx = BackwardContext(shapes=shapes, differentiable=set(), constants=graph_constants(graph))
    sources = {GRADIENTS: cam_layer}
    if input_gradients != "none":
        sources[INPUT_GRADIENTS] = model_input(graph)
    if multi_target:
        gradients = _multi_target_gradients(ctx, graph, cam_layer, score, tumour_classes)
    else:
        seed = _one_hot_target(ctx, score, tumour_classes, TARGET_CLASS)
        plain = {GRADIENTS: cam_layer} if input_gradients == "guided" else sources
        gradients = _gradients(ctx, graph, plain, score, seed)
        if input_gradients == "guided":  # a second walk, with guided Relus, from the score to the input
            ctx.guided = True
            gradients.update(_gradients(ctx, graph, {INPUT_GRADIENTS: sources[INPUT_GRADIENTS]}, score, seed))
    activations, gradients[GRADIENTS] = _as_nchw(ctx, graph, cam_layer, gradients[GRADIENTS], multi_target)
    outputs = {PROBABILITIES: probabilities, ACTIVATIONS: activations, **gradients}
    _wire_outputs(graph, ctx, outputs, target_rank=2 if multi_target else 1)
    return cam_model


def _lowered_shapes(model: onnx.ModelProto) -> dict[str, Shape | None]:
    """Static shapes, after LSTM/GRU nodes are unrolled into elementary ops (``models.backward_rnn``)."""
    shapes = static_shapes(model)
    if any(node.op_type in ("LSTM", "GRU") for node in model.graph.node):
        lower_recurrent(model.graph, unit_batch_shapes(model), graph_constants(model.graph))
        shapes = static_shapes(model)
    return shapes


def _gradients(
    ctx: BackwardContext, graph: onnx.GraphProto, sources: dict[str, str], score: str, seed: str
) -> dict[str, str]:
    """One reverse walk from ``score`` to every source; returns {output name: gradient}."""
    ctx.differentiable = differentiable_tensors(graph.node, sources.values())
    path = _checked_path(list(graph.node), ctx, sources, score)
    grads = _backpropagate(ctx, path, score, seed)
    return {output: ctx.accumulate(grads[source]) for output, source in sources.items()}


def _multi_target_gradients(
    ctx: BackwardContext, graph: onnx.GraphProto, cam_layer: str, score: str, tumour_classes: Sequence[int]
) -> dict[str, str]:
    """Gradients [T * N, ...] through a copy of the head fed T tiles of the activations (``models.cam_targets``)."""
    constants = {init.name for init in graph.initializer}
    tiled_cam, tiled_score, head = tiled_head(ctx, list(graph.node), constants, cam_layer, score)
    ctx.differentiable = differentiable_tensors(head, [tiled_cam])
    path = _checked_path(head, ctx, {GRADIENTS: tiled_cam}, tiled_score)
    seed = _one_hot_target(ctx, tiled_score, tumour_classes, flat_targets(ctx))
    return {GRADIENTS: ctx.accumulate(_backpropagate(ctx, path, tiled_score, seed)[tiled_cam])}


def _bump_opset(model: onnx.ModelProto) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            if opset.version < 13:
                raise ModelContractError(f"opset {opset.version} is too old; re-export with opset >= 13")
            opset.version = max(opset.version, MIN_OPSET)
    model.ir_version = max(model.ir_version, 8)


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {info.name for info in graph.input} | {init.name for init in graph.initializer}
    return names | {name for node in graph.node for name in (*node.input, *node.output) if name}


def _check_reserved_names(graph: onnx.GraphProto, input_gradients: bool) -> None:
    """``target_class``, ``gradients`` (``input_gradients``) and the ``camready/`` prefix are ours alone."""
    reserved = (TARGET_CLASS, GRADIENTS, *((INPUT_GRADIENTS,) if input_gradients else ()))
    clashes = sorted(name for name in _tensor_names(graph) if name in reserved or name.startswith(_PREFIX))
    if clashes:
        raise ModelContractError(
            f"the model already has tensors named {clashes}; the CAM-ready form adds tensors with these "
            f"names (reserved: {', '.join(map(repr, reserved))}, {_PREFIX!r}...); rename them"
        )


def _check_output_names(graph: onnx.GraphProto, **sources: str) -> None:
    """``probabilities``/``activations`` may already name their own source, never another tensor."""
    names = _tensor_names(graph)
    for output, source in sources.items():
        if output in names and output != source:
            raise ModelContractError(
                f"the model has a tensor named {output!r} that is not the {output} output ({source!r}); rename it"
            )


def _check_class_score(output_node: onnx.NodeProto, shapes: dict[str, Shape | None]) -> None:
    """The score is [N, K] and a final Softmax normalises over K (axis -1 or 1)."""
    output = output_node.output[0]
    is_softmax = output_node.op_type == "Softmax"
    shape = shapes.get(output_node.input[0]) if is_softmax else None
    shape = shape or shapes.get(output)
    if shape is None:
        raise ModelContractError(f"the rank of output {output!r} cannot be inferred; the class score must be [N, K]")
    if len(shape) != 2:
        raise ModelContractError(f"output {output!r} has rank {len(shape)}; the class score must be [N, K]")
    axis = attr(output_node, "axis", -1) if is_softmax else -1
    if axis not in (-1, 1):
        raise ModelContractError(f"the final Softmax of {output!r} is over axis {axis}; it must be -1 or 1 (classes)")


def _score_and_probabilities(
    graph: onnx.GraphProto, output_node: onnx.NodeProto, output_is_probability: bool
) -> tuple[str, str]:
    output = output_node.output[0]
    if output_node.op_type == "Softmax":
        return output_node.input[0], output
    if output_is_probability:
        return output, output
    softmax = helper.make_node("Softmax", [output], ["camready/softmax"], name="camready/Softmax", axis=-1)
    graph.node.append(softmax)
    return output, softmax.output[0]


def _checked_path(
    nodes: list[onnx.NodeProto], ctx: BackwardContext, sources: dict[str, str], score: str
) -> list[onnx.NodeProto]:
    """Nodes (in graph order) that carry gradient from ``sources`` to ``score``; refuse an op without a rule."""
    path, needed = path_nodes(nodes, ctx.differentiable, score)
    for output, source in sources.items():
        if source not in needed:
            what = "cam_layer" if output == GRADIENTS else "the model input"
            raise ModelContractError(f"the class score does not depend on {what} {source!r}")
    for node in path:
        if node.op_type not in SUPPORTED_OPS:
            raise UnsupportedCamOp(
                f"op {node.op_type} in node {node.name!r} (output {node.output[0]!r}) lies on the path to the "
                f"class score and cannot be differentiated; supported: {sorted(SUPPORTED_OPS)}"
            )
    return path


def _one_hot_target(ctx: BackwardContext, score: str, tumour_classes: Sequence[int], requested: str) -> str:
    """d(sum_n score[n, t_n]) / d score: one-hot rows; t_n = argmax where target_class = -1,
    the argmax over ``tumour_classes`` where it is -2 (softmax is monotone, so the argmax of
    the score is the argmax of the probabilities)."""
    predicted = ctx.emit("ArgMax", [score], axis=-1, keepdims=0)
    use_predicted = ctx.emit("Less", [requested, ctx.constant(0, dtype=np.int64)])
    target = ctx.emit("Where", [use_predicted, predicted, requested])
    if tumour_classes:
        indices = ctx.constant(list(tumour_classes), np.int64)
        subset = ctx.emit("Gather", [score, indices], axis=-1)
        best_tumour = ctx.emit("Gather", [indices, ctx.emit("ArgMax", [subset], axis=-1, keepdims=0)], axis=0)
        use_tumour = ctx.emit("Equal", [requested, ctx.constant(TUMOUR_TARGET, dtype=np.int64)])
        target = ctx.emit("Where", [use_tumour, best_tumour, target])
    depth = ctx.emit(
        "Slice", [ctx.emit("Shape", [score]), ctx.constant([-1], np.int64), ctx.constant([2**62], np.int64)]
    )
    return ctx.emit("OneHot", [target, depth, ctx.constant([0.0, 1.0])], axis=-1)


def _backpropagate(ctx: BackwardContext, path: list[onnx.NodeProto], score: str, seed: str) -> dict[str, list[str]]:
    """Reverse-mode walk; every output of a node gets its summed gradient (zeros for unused outputs of a
    multi-output op), and each differentiable input collects one contribution per consumer."""
    grads: dict[str, list[str]] = {score: [seed]}
    for node in reversed(path):
        if node.op_type in MULTI_OUTPUT_OPS:
            arriving = [grads.get(name) for name in node.output]
            if not any(arriving):
                continue
            d_outs = [
                ctx.accumulate(g) if g else ctx.zeros_like(name) for name, g in zip(node.output, arriving, strict=True)
            ]
            input_grads = MULTI_OUTPUT_OPS[node.op_type](ctx, node, d_outs)
        else:
            contributions = grads.get(node.output[0])
            if not contributions:
                continue
            d_out = ctx.accumulate(contributions)
            grads[node.output[0]] = [d_out]
            input_grads = BACKWARD_OPS[node.op_type](ctx, node, d_out)
        for name, grad in zip(node.input, input_grads, strict=True):
            if grad is not None and ctx.is_diff(name):
                grads.setdefault(name, []).append(grad)
    return grads


def _as_nchw(
    ctx: BackwardContext, graph: onnx.GraphProto, cam_layer: str, gradient: str, multi_target: bool
) -> tuple[str, str]:
    """Transpose a CAM layer of known non-NCHW layout (e.g. NHWC after a tf2onnx Transpose)
    and its gradient to NCHW; an unknown layout is taken as NCHW (the contract check refuses
    a model whose declared input layout proves otherwise)."""
    permutation = trace_layout(graph, cam_layer).permutation
    if permutation is None or permutation == NCHW:
        return cam_layer, per_image(ctx, gradient) if multi_target else gradient
    if cam_layer == ACTIVATIONS:
        raise ModelContractError(
            f"cam_layer {cam_layer!r} is not NCHW and must be transposed into the {ACTIVATIONS!r} output; rename it"
        )
    to_nchw = [permutation.index(axis) for axis in range(len(permutation))]
    gradient = ctx.emit("Transpose", [gradient], perm=to_nchw)
    return ctx.emit("Transpose", [cam_layer], perm=to_nchw), per_image(ctx, gradient) if multi_target else gradient


def _wire_outputs(graph: onnx.GraphProto, ctx: BackwardContext, sources: dict[str, str], target_rank: int) -> None:
    float_type = onnx.TensorProto.FLOAT
    for output_name, source in sources.items():
        if source != output_name:  # a model output already called "probabilities" is kept as is
            ctx.nodes.append(helper.make_node("Identity", [source], [output_name], name=f"{_PREFIX}{output_name}"))
    graph.node.extend(ctx.nodes)
    graph.initializer.extend(ctx.initializers)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, float_type, None) for name in sources)
    target_shape = ["N", "T"][:target_rank]
    graph.input.append(helper.make_tensor_value_info(TARGET_CLASS, onnx.TensorProto.INT64, target_shape))


def cam_ready_path(
    onnx_path: Path,
    sha256: str,
    cache_dir: Path,
    *,
    cam_layer: str | None = None,
    output_name: str,
    output_is_probability: bool = True,
    tumour_classes: Sequence[int] = (),
    input_gradients: InputGradients = "none",
    multi_target: bool = False,
) -> Path:
    """Build the CAM-ready model once per file and keep it in ``cache_dir``.

    The name holds the file's sha256, the builder version and a digest of the head spec
    (two manifests may pick different CAM layers of one file; ``input_gradients`` and
    ``multi_target`` build different graphs). The file is checked
    against ``sha256`` first, so a swapped model never reuses a stale
    cache entry. Concurrent builders each write a temp file and ``os.replace`` it: the last
    one wins and every reader sees a whole file.
    """
    verify_model_file(onnx_path, sha256)
    cache_dir.mkdir(parents=True, exist_ok=True)
    spec = (
        f"{cam_layer}\0{output_name}\0{output_is_probability}\0{list(tumour_classes)}"
        f"\0{input_gradients}\0{multi_target}"
    )
    head = hashlib.sha256(spec.encode()).hexdigest()
    target = cache_dir / f"{sha256}-camready-{CAM_READY_VERSION}-{BUILDER_HASH}-{head[:12]}.onnx"
    if target.is_file():
        return target
    logger.info("building CAM-ready model", extra={"model_sha256": sha256, "cam_layer": cam_layer})
    cam_model = make_cam_ready(
        onnx.load(str(onnx_path)),
        cam_layer=cam_layer,
        output_name=output_name,
        output_is_probability=output_is_probability,
        tumour_classes=tumour_classes,
        input_gradients=input_gradients,
        multi_target=multi_target,
    )
    handle, temp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{sha256}-", suffix=".tmp")
    os.close(handle)
    try:
        onnx.save(cam_model, temp_name)
        os.replace(temp_name, target)
    finally:
        Path(temp_name).unlink(missing_ok=True)
    return target


def builder_hash(folder: Path = Path(__file__).parent) -> str:
    """First 12 hex digits of the sha256 of the builder's own sources: editing the builder
    renames every cache entry, so a CAM-ready file is never reused across builder changes."""
    digest = hashlib.sha256()
    for name in sorted(BUILDER_SOURCES):
        digest.update(f"{name}\0".encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


BUILDER_HASH = builder_hash()
