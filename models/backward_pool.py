"""Reverse-mode derivatives of the pooling ops.

MaxPool routes each output gradient to the input element its Indices output names
(ONNX MaxPool: indices index the flattened N x C x H x W input, row-major with
``storage_order=0``). A ScatterElements with ``reduction="add"`` sums the contributions,
so overlapping windows that pick the same element are exact (opset 16).
"""

import math

import numpy as np
import onnx

from models.backward_context import BackwardContext, GradFn, attr, where
from models.errors import UnsupportedCamOp


def _max_pool(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    if len(node.output) < 2 or not node.output[1]:
        del node.output[1:]
        node.output.append(ctx.fresh("maxpool_indices"))
        for index, attribute in enumerate(node.attribute):
            if attribute.name == "storage_order":  # only changes Indices, which nobody else reads
                del node.attribute[index]
                break
    elif int(attr(node, "storage_order", 0)):  # type: ignore[call-overload]
        raise UnsupportedCamOp(f"{where(node)}: column-major Indices are not supported")
    flat = ctx.constant([-1], np.int64)
    x = node.input[0]
    size = ctx.emit("Reshape", [ctx.emit("Size", [x]), ctx.constant([1], np.int64)])
    zeros = ctx.emit("ConstantOfShape", [size], value=onnx.numpy_helper.from_array(np.zeros(1, np.float32)))
    indices = ctx.emit("Reshape", [node.output[1], flat])
    updates = ctx.emit("Reshape", [d_out, flat])
    scattered = ctx.emit("ScatterElements", [zeros, indices, updates], axis=0, reduction="add")
    return [ctx.emit("Reshape", [scattered, ctx.emit("Shape", [x])])]


def _global_average_pool(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Every input element receives the output gradient divided by H*W."""
    x_shape = ctx.emit("Shape", [node.input[0]])
    spatial = ctx.emit("Slice", [x_shape, ctx.constant([2], np.int64), ctx.constant([2**62], np.int64)])
    count = ctx.emit("Cast", [ctx.emit("ReduceProd", [spatial], keepdims=1)], to=onnx.TensorProto.FLOAT)
    return [ctx.emit("Div", [ctx.emit("Expand", [d_out, x_shape]), count])]


def _average_pool(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """The transpose of a per-channel box filter: a grouped ConvTranspose with weights 1/k."""
    kernel = [int(k) for k in attr(node, "kernel_shape", [])]  # type: ignore[attr-defined]
    strides = [int(s) for s in attr(node, "strides", [1] * len(kernel))]  # type: ignore[attr-defined]
    pads = [int(p) for p in attr(node, "pads", [0] * 2 * len(kernel))]  # type: ignore[attr-defined]
    _check_average_pool(node, pads)
    x_shape = ctx.shapes.get(node.input[0])
    y_shape = ctx.shapes.get(node.output[0])
    if x_shape is None or y_shape is None or not all(isinstance(d, int) for d in (*x_shape[1:], *y_shape[2:])):
        raise UnsupportedCamOp(f"{where(node)}: channels and spatial sizes must be static")
    channels = int(x_shape[1])  # type: ignore[arg-type]
    rank = len(kernel)
    output_padding = [
        int(x_shape[2 + i]) - ((int(y_shape[2 + i]) - 1) * strides[i] + kernel[i] - pads[i] - pads[i + rank])  # type: ignore[arg-type]
        for i in range(rank)
    ]
    weight = ctx.constant(np.full((channels, 1, *kernel), 1.0 / math.prod(kernel), dtype=np.float32))
    grad = ctx.emit(
        "ConvTranspose",
        [d_out, weight],
        group=channels,
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        output_padding=output_padding,
    )
    return [grad]


def _check_average_pool(node: onnx.NodeProto, pads: list[int]) -> None:
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedCamOp(f"{where(node)}: auto_pad is not supported; use explicit pads")
    if int(attr(node, "ceil_mode", 0)):  # type: ignore[call-overload]
        raise UnsupportedCamOp(f"{where(node)}: ceil_mode=1 is not supported")
    if any(int(d) != 1 for d in attr(node, "dilations", [])):  # type: ignore[attr-defined]
        raise UnsupportedCamOp(f"{where(node)}: dilations are not supported")
    if any(pads) and not int(attr(node, "count_include_pad", 0)):  # type: ignore[call-overload]
        raise UnsupportedCamOp(f"{where(node)}: padding needs count_include_pad=1")


POOLING_OPS: dict[str, GradFn] = {
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
}
