"""Reverse-mode derivatives of ONNX ops, emitted as ONNX nodes.

Each function receives the node and the gradient of its first output (ops of several
outputs, in ``MULTI_OUTPUT_OPS``, one gradient per output) and returns one gradient name
(or ``None``) per input. ``BACKWARD_OPS`` is the registry ``cam_ready``
walks; an op missing from it cannot sit between the CAM layer and the class score.
"""

import numpy as np
import onnx

from models.backward_activations import ACTIVATION_OPS
from models.backward_context import BackwardContext, GradFn, attr, unbroadcast, unbroadcast_dynamic, where
from models.backward_conv import CONV_OPS
from models.backward_pool import POOLING_OPS
from models.backward_reduce import REDUCE_OPS
from models.backward_shape import MULTI_OUTPUT_OPS, SHAPE_OPS
from models.errors import UnsupportedCamOp


def _pass_through(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    return [d_out] + [None] * (len(node.input) - 1)


def _dropout(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    if len(node.input) > 2 and node.input[2]:
        raise UnsupportedCamOp(f"{where(node)} has a training_mode input; export in eval mode")
    return _pass_through(ctx, node, d_out)


def _reshape_like_input(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Reshape, Flatten, Squeeze, Unsqueeze only move elements: reshape the gradient back."""
    grad = ctx.emit("Reshape", [d_out, ctx.emit("Shape", [node.input[0]])])
    return [grad] + [None] * (len(node.input) - 1)


def _transpose(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    perm = attr(node, "perm", None)
    if perm is None:
        return [ctx.emit("Transpose", [d_out])]
    inverse = [int(axis) for axis in np.argsort(np.asarray(perm))]
    return [ctx.emit("Transpose", [d_out], perm=inverse)]


def _add(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    a, b = node.input
    return [
        unbroadcast(ctx, d_out, a, b) if ctx.is_diff(a) else None,
        unbroadcast(ctx, d_out, b, a) if ctx.is_diff(b) else None,
    ]


def _sub(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    d_a, d_b = _add(ctx, node, d_out)
    return [d_a, None if d_b is None else ctx.emit("Neg", [d_b])]


def _mul(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    a, b = node.input
    return [
        unbroadcast(ctx, ctx.emit("Mul", [d_out, b]), a, b) if ctx.is_diff(a) else None,
        unbroadcast(ctx, ctx.emit("Mul", [d_out, a]), b, a) if ctx.is_diff(b) else None,
    ]


def _div(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    a, b = node.input
    d_a = unbroadcast(ctx, ctx.emit("Div", [d_out, b]), a, b) if ctx.is_diff(a) else None
    d_b = None
    if ctx.is_diff(b):  # d(a/b)/db = -(a/b)/b
        scaled = ctx.emit("Div", [ctx.emit("Mul", [d_out, node.output[0]]), b])
        d_b = unbroadcast(ctx, ctx.emit("Neg", [scaled]), b, a)
    return [d_a, d_b]


def _swap_last_two(ctx: BackwardContext, tensor: str, node: onnx.NodeProto) -> str:
    rank = ctx.rank(tensor)
    if rank is None or rank < 2:
        raise UnsupportedCamOp(f"{where(node)}: operand {tensor!r} needs a known rank >= 2")
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ctx.emit("Transpose", [tensor], perm=perm)


def _matmul(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """dA = dY @ B^T, dB = A^T @ dY, summed over broadcast batch axes."""
    a, b = node.input
    plain_2d = ctx.rank(a) == 2 and ctx.rank(b) == 2
    d_a = d_b = None
    if ctx.is_diff(a):
        if plain_2d:  # Gemm reads B transposed in place: no copy of a large weight matrix
            d_a = ctx.emit("Gemm", [d_out, b], transB=1)
        else:
            d_a = _unbroadcast_batch(ctx, ctx.emit("MatMul", [d_out, _swap_last_two(ctx, b, node)]), a, b)
    if ctx.is_diff(b):
        if plain_2d:
            d_b = ctx.emit("Gemm", [a, d_out], transA=1)
        else:
            d_b = _unbroadcast_batch(ctx, ctx.emit("MatMul", [_swap_last_two(ctx, a, node), d_out]), b, a)
    return [d_a, d_b]


def _unbroadcast_batch(ctx: BackwardContext, grad: str, target: str, other: str) -> str:
    """A rank-2 ``other`` has no batch axes, so the gradient already has ``target``'s shape."""
    return grad if ctx.rank(other) == 2 else unbroadcast_dynamic(ctx, grad, target)


def _gemm(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Y = alpha * op(A) @ op(B) + beta * C with only A on the gradient path."""
    if any(ctx.is_diff(name) for name in node.input[1:]):
        raise UnsupportedCamOp(f"{where(node)}: only input A may depend on the CAM layer")
    b = node.input[1]
    alpha = float(attr(node, "alpha", 1.0))  # type: ignore[arg-type]
    trans_b = int(attr(node, "transB", 0))  # type: ignore[call-overload]
    if int(attr(node, "transA", 0)):  # type: ignore[call-overload]
        d_a = ctx.emit("Gemm", [b, d_out], alpha=alpha, transA=trans_b, transB=1)
    else:
        d_a = ctx.emit("Gemm", [d_out, b], alpha=alpha, transB=1 - trans_b)
    return [d_a] + [None] * (len(node.input) - 1)


BACKWARD_OPS: dict[str, GradFn] = {
    "Add": _add,
    "Sub": _sub,
    "Mul": _mul,
    "Div": _div,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Transpose": _transpose,
    "Reshape": _reshape_like_input,
    "Flatten": _reshape_like_input,
    "Squeeze": _reshape_like_input,
    "Unsqueeze": _reshape_like_input,
    "Identity": _pass_through,
    "Dropout": _dropout,
    **POOLING_OPS,
    **ACTIVATION_OPS,
    **CONV_OPS,
    **REDUCE_OPS,
    **SHAPE_OPS,
}
SUPPORTED_OPS = frozenset({*BACKWARD_OPS, *MULTI_OUTPUT_OPS})
__all__ = ["BACKWARD_OPS", "MULTI_OUTPUT_OPS", "SUPPORTED_OPS"]
