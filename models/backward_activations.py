"""Reverse-mode derivatives of element-wise activations and Softmax (ONNX Operators).

At a kink the derivative is the one PyTorch autograd takes (ReLU and LeakyReLU: the
negative side at 0; Clip: 1 on the closed interval; HardSigmoid: 0 on the boundary), so
the tests compare with autograd exactly. ``ctx.guided`` turns the ReLU rule into guided
backpropagation (Springenberg et al. 2015, "Striving for simplicity", eq. 6):
gradient * (x > 0) * (gradient > 0).
"""

import numpy as np
import onnx

from models.backward_context import BackwardContext, GradFn, attr, int_attr


def _relu(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    zero = ctx.constant(0.0)
    positive = ctx.emit("Greater", [node.output[0], zero])
    if ctx.guided:
        positive = ctx.emit("And", [positive, ctx.emit("Greater", [d_out, zero])])
    return [ctx.emit("Where", [positive, d_out, zero])]


def _leaky_relu(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    alpha = float(attr(node, "alpha", 0.01))  # type: ignore[arg-type]
    positive = ctx.emit("Greater", [node.input[0], ctx.constant(0.0)])
    return [ctx.emit("Where", [positive, d_out, ctx.emit("Mul", [d_out, ctx.constant(alpha)])])]


def _clip(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Gradient passes where min <= x <= max; bounds are inputs (opset >= 11) or attributes."""
    x = node.input[0]
    inside = None
    for index, name, compare in ((1, "min", "GreaterOrEqual"), (2, "max", "LessOrEqual")):
        bound = node.input[index] if len(node.input) > index and node.input[index] else None
        if bound is None and attr(node, name, None) is not None:
            bound = ctx.constant(float(attr(node, name, 0.0)))  # type: ignore[arg-type]
        if bound is not None:
            test = ctx.emit(compare, [x, bound])
            inside = test if inside is None else ctx.emit("And", [inside, test])
    grad = d_out if inside is None else ctx.emit("Where", [inside, d_out, ctx.constant(0.0)])
    return [grad] + [None] * (len(node.input) - 1)


def _sigmoid(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """sigma' = y (1 - y)."""
    y = node.output[0]
    slope = ctx.emit("Mul", [y, ctx.emit("Sub", [ctx.constant(1.0), y])])
    return [ctx.emit("Mul", [d_out, slope])]


def _tanh(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """tanh' = 1 - y^2."""
    y = node.output[0]
    slope = ctx.emit("Sub", [ctx.constant(1.0), ctx.emit("Mul", [y, y])])
    return [ctx.emit("Mul", [d_out, slope])]


def _hard_sigmoid(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """y = max(0, min(1, alpha x + beta)): slope alpha strictly inside (0, 1)."""
    alpha = float(attr(node, "alpha", 0.2))  # type: ignore[arg-type]
    beta = float(attr(node, "beta", 0.5))  # type: ignore[arg-type]
    linear = ctx.emit("Add", [ctx.emit("Mul", [node.input[0], ctx.constant(alpha)]), ctx.constant(beta)])
    inside = ctx.emit(
        "And", [ctx.emit("Greater", [linear, ctx.constant(0.0)]), ctx.emit("Less", [linear, ctx.constant(1.0)])]
    )
    return [ctx.emit("Where", [inside, ctx.emit("Mul", [d_out, ctx.constant(alpha)]), ctx.constant(0.0)])]


def _hard_swish(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """y = x * HardSigmoid(x; 1/6, 1/2): slope 0 below -3, x/3 + 1/2 on [-3, 3], 1 above."""
    x = node.input[0]
    middle = ctx.emit("Add", [ctx.emit("Div", [x, ctx.constant(3.0)]), ctx.constant(0.5)])
    slope = ctx.emit("Where", [ctx.emit("LessOrEqual", [x, ctx.constant(3.0)]), middle, ctx.constant(1.0)])
    slope = ctx.emit("Where", [ctx.emit("Less", [x, ctx.constant(-3.0)]), ctx.constant(0.0), slope])
    return [ctx.emit("Mul", [d_out, slope])]


def _softmax(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Opset >= 13 Softmax over one axis: dX = y * (dY - sum(dY * y, axis))."""
    y = node.output[0]
    axis = ctx.constant([int_attr(node, "axis", -1)], dtype=np.int64)
    dot = ctx.emit("ReduceSum", [ctx.emit("Mul", [d_out, y]), axis], keepdims=1)
    return [ctx.emit("Mul", [y, ctx.emit("Sub", [d_out, dot])])]


ACTIVATION_OPS: dict[str, GradFn] = {
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Sigmoid": _sigmoid,
    "Tanh": _tanh,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Softmax": _softmax,
}
