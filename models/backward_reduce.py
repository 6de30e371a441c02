"""Reverse-mode derivatives of reductions: ReduceSum, ReduceMean, ReduceMax, GlobalMaxPool.

The output gradient is broadcast back over the reduced axes (ONNX Operators ``ReduceSum``
& co.: ``axes`` an attribute before opset 18, an input from opset 18 (ReduceSum: 13);
``keepdims`` 0 drops them, so they are restored first). A maximum shares its gradient
equally among tied elements, as PyTorch's ``amax`` does; ties of real-valued activations
have probability zero.
"""

import numpy as np
import onnx

from models.backward_context import BackwardContext, GradFn, axes_of, int_attr
from models.errors import UnsupportedCamOp


def _reduced_axes(ctx: BackwardContext, node: onnx.NodeProto) -> list[int] | None:
    """Normalised reduced axes; ``None`` when the op is the identity (empty axes, noop_with_empty_axes)."""
    rank = ctx.rank(node.input[0])
    if rank is None:
        raise UnsupportedCamOp(f"{node.op_type} node {node.name!r} (output {node.output[0]!r}): unknown input rank")
    if node.op_type == "GlobalMaxPool":
        return list(range(2, rank))
    axes = axes_of(ctx, node)
    if not axes:
        return None if int_attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(axis % rank for axis in axes)


def _kept(ctx: BackwardContext, node: onnx.NodeProto, tensor: str, axes: list[int]) -> str:
    """``tensor`` (shaped like the output) with the reduced axes back as size 1."""
    if node.op_type == "GlobalMaxPool" or int_attr(node, "keepdims", 1):
        return tensor
    return ctx.emit("Unsqueeze", [tensor, ctx.constant(axes, np.int64)])


def _spread(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> tuple[str, list[int] | None]:
    axes = _reduced_axes(ctx, node)
    if axes is None:
        return d_out, None
    return ctx.emit("Expand", [_kept(ctx, node, d_out, axes), ctx.emit("Shape", [node.input[0]])]), axes


def _reduce_sum(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    grad, _ = _spread(ctx, node, d_out)
    return [grad] + [None] * (len(node.input) - 1)


def _reduce_mean(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Each element gets dY / (elements per mean) = dY * size(Y) / size(X)."""
    grad, axes = _spread(ctx, node, d_out)
    if axes is not None:
        outputs = ctx.emit("Cast", [ctx.emit("Size", [node.output[0]])], to=onnx.TensorProto.FLOAT)
        elements = ctx.emit("Cast", [ctx.emit("Size", [node.input[0]])], to=onnx.TensorProto.FLOAT)
        grad = ctx.emit("Div", [ctx.emit("Mul", [grad, outputs]), elements])
    return [grad] + [None] * (len(node.input) - 1)


def _reduce_max(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """dX = dY * [x == max] / (number of ties)."""
    grad, axes = _spread(ctx, node, d_out)
    if axes is None:
        return [grad] + [None] * (len(node.input) - 1)
    x = node.input[0]
    peak = ctx.emit("Expand", [_kept(ctx, node, node.output[0], axes), ctx.emit("Shape", [x])])
    hits = ctx.emit("Cast", [ctx.emit("Equal", [x, peak])], to=onnx.TensorProto.FLOAT)
    ties = ctx.emit("ReduceSum", [hits, ctx.constant(axes, np.int64)], keepdims=1)
    return [ctx.emit("Div", [ctx.emit("Mul", [grad, hits]), ties])] + [None] * (len(node.input) - 1)


REDUCE_OPS: dict[str, GradFn] = {
    "ReduceSum": _reduce_sum,
    "ReduceMean": _reduce_mean,
    "ReduceMax": _reduce_max,
    "GlobalMaxPool": _reduce_max,
}
