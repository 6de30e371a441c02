"""Reverse-mode derivatives of convolution and inference-mode batch normalisation.

The data gradient of ``Conv`` is the transposed convolution with the same weights, group,
strides, dilations and pads (ONNX Operators: ``Conv``, ``ConvTranspose``; Dumoulin &
Visin 2016, "A guide to convolution arithmetic", section 4); ``output_padding`` restores
the input rows a strided convolution never reached. Weights are constants: only the data
input carries gradient.
"""

import numpy as np
import onnx

from models.backward_context import BackwardContext, GradFn, int_attr, ints_attr, str_attr, where
from models.errors import UnsupportedCamOp


def _only_data_input(ctx: BackwardContext, node: onnx.NodeProto) -> None:
    if any(ctx.is_diff(name) for name in node.input[1:] if name):
        raise UnsupportedCamOp(f"{where(node)}: only the data input may depend on the CAM layer, not the weights")


def _conv_geometry(
    ctx: BackwardContext, node: onnx.NodeProto
) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, pads, input spatial, output spatial), with auto_pad made explicit."""
    x_dims = ctx.static_dims(node.input[0], node)[1:]
    y_dims = ctx.static_dims(node.output[0], node)[1:]
    kernel = ints_attr(node, "kernel_shape") or ctx.static_dims(node.input[1], node)[1:]
    rank = len(kernel)
    strides = ints_attr(node, "strides") or [1] * rank
    dilations = ints_attr(node, "dilations") or [1] * rank
    pads = ints_attr(node, "pads") or [0] * 2 * rank
    auto_pad = str_attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):  # ONNX Conv: total = (out - 1) * s + (k - 1) * d + 1 - in
        totals = [
            max(0, (y_dims[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - x_dims[i]) for i in range(rank)
        ]
        small = [total // 2 for total in totals]
        large = [total - total // 2 for total in totals]
        pads = small + large if auto_pad == "SAME_UPPER" else large + small
    elif auto_pad == "VALID":
        pads = [0] * 2 * rank
    return kernel, strides, dilations, pads, x_dims, y_dims


def _conv(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """dX = ConvTranspose(dY, W) with the Conv's own attributes; output_padding fills the last rows."""
    _only_data_input(ctx, node)
    kernel, strides, dilations, pads, x_dims, y_dims = _conv_geometry(ctx, node)
    rank = len(kernel)
    output_padding = [
        x_dims[i] - ((y_dims[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - pads[i] - pads[i + rank])
        for i in range(rank)
    ]
    grad = ctx.emit(
        "ConvTranspose",
        [d_out, node.input[1]],
        group=int_attr(node, "group", 1),
        kernel_shape=kernel,
        strides=strides,
        dilations=dilations,
        pads=pads,
        output_padding=output_padding,
    )
    return [grad] + [None] * (len(node.input) - 1)


def _conv_transpose(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """dX = Conv(dY, W): a ConvTranspose is the adjoint of the Conv with its attributes."""
    _only_data_input(ctx, node)
    if str_attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or ints_attr(node, "output_shape"):
        raise UnsupportedCamOp(f"{where(node)}: auto_pad SAME and output_shape are not supported; use explicit pads")
    kernel = ints_attr(node, "kernel_shape") or ctx.static_dims(node.input[1], node)[1:]
    rank = len(kernel)
    pads = [0] * 2 * rank if str_attr(node, "auto_pad", "NOTSET") == "VALID" else ints_attr(node, "pads")
    grad = ctx.emit(
        "Conv",
        [d_out, node.input[1]],
        group=int_attr(node, "group", 1),
        kernel_shape=kernel,
        strides=ints_attr(node, "strides") or [1] * rank,
        dilations=ints_attr(node, "dilations") or [1] * rank,
        pads=pads or [0] * 2 * rank,
    )
    return [grad] + [None] * (len(node.input) - 1)


def _batch_normalization(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Inference mode: y = scale * (x - mean) / sqrt(var + eps) + B, so dX = dY * scale / sqrt(var + eps)."""
    _only_data_input(ctx, node)
    if int_attr(node, "training_mode", 0) or len([name for name in node.output if name]) > 1:
        raise UnsupportedCamOp(f"{where(node)}: only inference-mode BatchNormalization is supported")
    rank = ctx.rank(node.input[0])
    if rank is None:
        raise UnsupportedCamOp(f"{where(node)}: the rank of {node.input[0]!r} must be known")
    scale, var = node.input[1], node.input[4]
    epsilon = float(node_epsilon(node))
    deviation = ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.constant(epsilon)])])
    factor = ctx.emit("Div", [scale, deviation])
    per_channel = ctx.emit("Reshape", [factor, ctx.constant([-1] + [1] * (rank - 2), np.int64)])
    return [ctx.emit("Mul", [d_out, per_channel]), None, None, None, None]


def node_epsilon(node: onnx.NodeProto) -> float:
    for attribute in node.attribute:
        if attribute.name == "epsilon":
            return float(attribute.f)
    return 1e-5  # the ONNX default


CONV_OPS: dict[str, GradFn] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_normalization,
}
