"""Several explained classes per image in one run: the head re-run on tiled activations.

With ``target_class`` [N, T], the head (the nodes between the CAM layer and the score) is
copied once and fed the CAM-layer activations tiled T times along the batch axis (row
t * N + n is image n, target t); back-propagating through the copy gives T exact gradient
maps per image while the trunk runs once. Any other non-constant tensor the head reads
(a skip connection, a Shape of the input) is tiled the same way: batch axis first, as in
every image classifier input.
"""

from collections.abc import Sequence

import numpy as np
import onnx

from models.backward_context import BackwardContext, Shape
from models.errors import UnsupportedCamOp

_COPY = "camready/target/"


def head_closure(nodes: Sequence[onnx.NodeProto], cam_layer: str, score: str) -> list[onnx.NodeProto]:
    """Every node ``score`` needs, walking back until ``cam_layer``, in graph order."""
    producers = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    chosen: set[int] = set()
    pending, seen = [score], {cam_layer}
    while pending:
        name = pending.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        chosen.add(producers[name])
        pending.extend(nodes[producers[name]].input)
    return [node for index, node in enumerate(nodes) if index in chosen]


def _tile(ctx: BackwardContext, tensor: str, targets: str) -> str:
    """``tensor`` repeated ``targets`` times along axis 0: [T * N, ...]."""
    rank = ctx.rank(tensor)
    if rank is None:
        raise UnsupportedCamOp(f"multi_target: the rank of {tensor!r}, which the head reads, must be known")
    if rank == 0:
        return tensor
    repeats = ctx.emit("Concat", [targets, ctx.constant([1] * (rank - 1), np.int64)], axis=0)
    return ctx.emit("Tile", [tensor, repeats])


def tiled_head(
    ctx: BackwardContext, nodes: Sequence[onnx.NodeProto], constants: set[str], cam_layer: str, score: str
) -> tuple[str, str, list[onnx.NodeProto]]:
    """(tiled CAM layer, score of the copy, the copied nodes) appended to ``ctx.nodes``; T = target_class dim 1."""
    head = head_closure(nodes, cam_layer, score)
    produced = {name for node in head for name in node.output if name}
    external = sorted({name for node in head for name in node.input if name} - produced - constants - {cam_layer})
    targets = ctx.emit("Gather", [ctx.emit("Shape", ["target_class"]), ctx.constant([1], np.int64)], axis=0)
    renamed = {name: _tile(ctx, name, targets) for name in [cam_layer, *external]}
    renamed.update({name: f"{_COPY}{name}" for name in produced})
    shapes = dict(ctx.shapes)
    for name in produced:  # the copy's batch axis is T * N: leave it unknown
        shape: Shape | None = ctx.shapes.get(name)
        shapes[renamed[name]] = None if shape is None else (None, *shape[1:])
    cam_shape = ctx.shapes.get(cam_layer)
    shapes[renamed[cam_layer]] = None if cam_shape is None else (None, *cam_shape[1:])
    ctx.shapes = shapes
    copies = [_copy(node, renamed) for node in head]
    ctx.nodes.extend(copies)
    return renamed[cam_layer], renamed[score], copies


def _copy(node: onnx.NodeProto, renamed: dict[str, str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = f"{_COPY}{node.name}"
    for index, name in enumerate(node.input):
        copy.input[index] = renamed.get(name, name)
    for index, name in enumerate(node.output):
        copy.output[index] = renamed.get(name, name) if name else name
    return copy


def per_image(ctx: BackwardContext, gradient: str) -> str:
    """[T * N, C, H, W] (row t * N + n) to [N, T, C, H, W]."""
    targets = ctx.emit("Gather", [ctx.emit("Shape", ["target_class"]), ctx.constant([1], np.int64)], axis=0)
    rest = ctx.emit(
        "Slice", [ctx.emit("Shape", [gradient]), ctx.constant([1], np.int64), ctx.constant([2**62], np.int64)]
    )
    shape = ctx.emit("Concat", [targets, ctx.constant([-1], np.int64), rest], axis=0)
    return ctx.emit("Transpose", [ctx.emit("Reshape", [gradient, shape])], perm=[1, 0, 2, 3, 4])


def flat_targets(ctx: BackwardContext) -> str:
    """target_class [N, T] as the [T * N] targets of the tiled rows."""
    return ctx.emit("Reshape", [ctx.emit("Transpose", ["target_class"], perm=[1, 0]), ctx.constant([-1], np.int64)])
