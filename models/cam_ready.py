"""Turn a classifier into its CAM-ready form: probabilities, activations and exact gradients.

Grad-CAM (Selvaraju et al. 2017) needs d y^c / d A, the gradient of the pre-softmax class
score with respect to a convolutional activation. Instead of a training framework we emit
the backward pass of the head (the nodes between the CAM layer and the score) as ONNX
nodes, so one ONNX Runtime call returns everything. Inputs gain ``target_class`` [N]
(int64, -1 = the predicted class); outputs become ``probabilities`` [N, K],
``activations`` and ``gradients`` (both NCHW: a CAM layer of another known layout,
such as NHWC in tf2onnx exports, is transposed; see ``models.cam_layout``).
"""

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from models.backward_context import BackwardContext, Shape, attr
from models.backward_ops import BACKWARD_OPS
from models.cam_layout import NCHW, trace_layout
from models.errors import ModelContractError, UnsupportedCamOp
from models.manifest import verify_model_file

logger = logging.getLogger(__name__)

CAM_READY_VERSION = "v1"
BUILDER_SOURCES = ("backward_context.py", "backward_ops.py", "backward_pool.py", "cam_layout.py", "cam_ready.py")
TARGET_CLASS = "target_class"
PREDICTED_TARGET = -1  # target_class value: explain the predicted class
TUMOUR_TARGET = -2  # target_class value: explain the most likely tumour class
PROBABILITIES = "probabilities"
ACTIVATIONS = "activations"
GRADIENTS = "gradients"
_PREFIX = "camready/"  # every tensor and node the builder adds (BackwardContext.fresh)
MIN_OPSET = 16  # ScatterElements(reduction="add") for the MaxPool gradient
_NON_DIFFERENTIABLE_OUTPUT = {
    *("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "GreaterOrEqual"),
    *("Less", "LessOrEqual", "Not", "IsNaN", "IsInf"),
}


def make_cam_ready(
    model: onnx.ModelProto,
    *,
    cam_layer: str,
    output_name: str,
    output_is_probability: bool = True,
    tumour_classes: Sequence[int] = (),
) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are probabilities, activations and their gradients.

    ``target_class`` -1 explains the predicted class; -2 the most likely of
    ``tumour_classes`` (so a "no tumour" prediction still gets the map of where a tumour
    would be, in the same single run).

    When ``output_name`` is produced by a Softmax the score is its input (the logit);
    otherwise the output itself is differentiated, and it is soft-maxed for
    ``probabilities`` unless ``output_is_probability``.
    """
    cam_model = onnx.ModelProto()
    cam_model.CopyFrom(model)
    _bump_opset(cam_model)
    graph = cam_model.graph
    producers = {out: node for node in graph.node for out in node.output}
    for tensor, role in ((cam_layer, "cam_layer"), (output_name, "output_name")):
        if tensor not in producers:
            raise ModelContractError(f"{role} {tensor!r} is not produced by any node of the model")
    _check_reserved_names(graph)
    shapes = _static_shapes(cam_model)
    _check_class_score(producers[output_name], shapes)
    score, probabilities = _score_and_probabilities(graph, producers[output_name], output_is_probability)
    _check_output_names(graph, probabilities=probabilities, activations=cam_layer)
    ctx = BackwardContext(shapes=shapes, differentiable=set())
    path = _differentiable_path(graph, ctx, cam_layer, score)
    seed = _one_hot_target(ctx, score, tumour_classes)
    gradient = _backpropagate(ctx, path, cam_layer, score, seed)
    activations, gradient = _as_nchw(ctx, graph, cam_layer, gradient)
    _wire_outputs(graph, ctx, probabilities=probabilities, activations=activations, gradients=gradient)
    return cam_model


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


def _check_reserved_names(graph: onnx.GraphProto) -> None:
    """``target_class``, ``gradients`` and the ``camready/`` prefix are ours alone."""
    clashes = sorted(
        name for name in _tensor_names(graph) if name in (TARGET_CLASS, GRADIENTS) or name.startswith(_PREFIX)
    )
    if clashes:
        raise ModelContractError(
            f"the model already has tensors named {clashes}; the CAM-ready form adds tensors with these "
            f"names (reserved: {TARGET_CLASS!r}, {GRADIENTS!r}, {_PREFIX!r}...); rename them"
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


def _static_shapes(model: onnx.ModelProto) -> dict[str, Shape | None]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, Shape | None] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            shapes[info.name] = None
            continue
        shapes[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
    for initializer in graph.initializer:
        shapes[initializer.name] = tuple(int(d) for d in initializer.dims)
    return shapes


def _differentiable_path(
    graph: onnx.GraphProto, ctx: BackwardContext, cam_layer: str, score: str
) -> list[onnx.NodeProto]:
    """Nodes (in graph order) that carry gradient from ``cam_layer`` to ``score``."""
    ctx.differentiable.add(cam_layer)
    for node in graph.node:
        if node.op_type in _NON_DIFFERENTIABLE_OUTPUT or not any(ctx.is_diff(i) for i in node.input):
            continue
        outputs = node.output[:1] if node.op_type == "MaxPool" else node.output
        ctx.differentiable.update(name for name in outputs if name)
    needed = {score}
    path: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if not any(out in needed for out in node.output) or not any(ctx.is_diff(i) for i in node.input):
            continue
        path.append(node)
        needed.update(i for i in node.input if ctx.is_diff(i))
    if cam_layer not in needed:
        raise ModelContractError(f"the class score does not depend on cam_layer {cam_layer!r}")
    for node in path:
        if node.op_type not in BACKWARD_OPS:
            where = " (only supported as the final node)" if node.op_type == "Softmax" else ""
            raise UnsupportedCamOp(
                f"op {node.op_type}{where} in node {node.name!r} lies between the CAM layer and the "
                f"class score and cannot be differentiated; supported: {sorted(BACKWARD_OPS)}"
            )
    return path[::-1]


def _one_hot_target(ctx: BackwardContext, score: str, tumour_classes: Sequence[int]) -> str:
    """d(sum_n score[n, t_n]) / d score: one-hot rows; t_n = argmax where target_class = -1,
    the argmax over ``tumour_classes`` where it is -2 (softmax is monotone, so the argmax of
    the score is the argmax of the probabilities)."""
    predicted = ctx.emit("ArgMax", [score], axis=-1, keepdims=0)
    use_predicted = ctx.emit("Less", [TARGET_CLASS, ctx.constant(0, dtype=np.int64)])
    target = ctx.emit("Where", [use_predicted, predicted, TARGET_CLASS])
    if tumour_classes:
        indices = ctx.constant(list(tumour_classes), np.int64)
        subset = ctx.emit("Gather", [score, indices], axis=-1)
        best_tumour = ctx.emit("Gather", [indices, ctx.emit("ArgMax", [subset], axis=-1, keepdims=0)], axis=0)
        use_tumour = ctx.emit("Equal", [TARGET_CLASS, ctx.constant(TUMOUR_TARGET, dtype=np.int64)])
        target = ctx.emit("Where", [use_tumour, best_tumour, target])
    depth = ctx.emit(
        "Slice", [ctx.emit("Shape", [score]), ctx.constant([-1], np.int64), ctx.constant([2**62], np.int64)]
    )
    return ctx.emit("OneHot", [target, depth, ctx.constant([0.0, 1.0])], axis=-1)


def _backpropagate(ctx: BackwardContext, path: list[onnx.NodeProto], cam_layer: str, score: str, seed: str) -> str:
    grads: dict[str, list[str]] = {score: [seed]}
    for node in reversed(path):
        contributions = grads.get(node.output[0])
        if not contributions:
            continue
        input_grads = BACKWARD_OPS[node.op_type](ctx, node, ctx.accumulate(contributions))
        for name, grad in zip(node.input, input_grads, strict=True):
            if grad is not None and ctx.is_diff(name):
                grads.setdefault(name, []).append(grad)
    return ctx.accumulate(grads[cam_layer])


def _as_nchw(ctx: BackwardContext, graph: onnx.GraphProto, cam_layer: str, gradient: str) -> tuple[str, str]:
    """Transpose a CAM layer of known non-NCHW layout (e.g. NHWC after a tf2onnx Transpose)
    and its gradient to NCHW; an unknown layout is taken as NCHW (the contract check refuses
    a model whose declared input layout proves otherwise)."""
    permutation = trace_layout(graph, cam_layer).permutation
    if permutation is None or permutation == NCHW:
        return cam_layer, gradient
    if cam_layer == ACTIVATIONS:
        raise ModelContractError(
            f"cam_layer {cam_layer!r} is not NCHW and must be transposed into the {ACTIVATIONS!r} output; rename it"
        )
    to_nchw = [permutation.index(axis) for axis in range(len(permutation))]
    return ctx.emit("Transpose", [cam_layer], perm=to_nchw), ctx.emit("Transpose", [gradient], perm=to_nchw)


def _wire_outputs(graph: onnx.GraphProto, ctx: BackwardContext, **sources: str) -> None:
    float_type = onnx.TensorProto.FLOAT
    for output_name, source in sources.items():
        if source != output_name:  # a model output already called "probabilities" is kept as is
            ctx.nodes.append(helper.make_node("Identity", [source], [output_name], name=f"{_PREFIX}{output_name}"))
    graph.node.extend(ctx.nodes)
    graph.initializer.extend(ctx.initializers)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, float_type, None) for name in sources)
    graph.input.append(helper.make_tensor_value_info(TARGET_CLASS, onnx.TensorProto.INT64, ["N"]))


def cam_ready_path(
    onnx_path: Path,
    sha256: str,
    cache_dir: Path,
    *,
    cam_layer: str,
    output_name: str,
    output_is_probability: bool = True,
    tumour_classes: Sequence[int] = (),
) -> Path:
    """Build the CAM-ready model once per file and keep it in ``cache_dir``.

    The name holds the file's sha256, the builder version and a digest of the head spec
    (two manifests may pick different CAM layers of one file). The file is checked
    against ``sha256`` first, so a swapped model never reuses a stale
    cache entry. Concurrent builders each write a temp file and ``os.replace`` it: the last
    one wins and every reader sees a whole file.
    """
    verify_model_file(onnx_path, sha256)
    cache_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{cam_layer}\0{output_name}\0{output_is_probability}\0{list(tumour_classes)}"
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
