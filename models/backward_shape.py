"""Reverse-mode derivatives of ops that select or arrange elements: Concat, Split, Slice, Gather, Pad, Expand.

Slice is differentiated by applying the very same Slice to a tensor of element indices
(0 .. size-1 shaped like the input) and scattering the output gradient to those indices
(ScatterElements with reduction "add", opset 16); Gather the same way. So every
``starts``/``ends``/``axes``/``steps`` form, negative ones included, is handled by ONNX
Runtime's own Slice (ONNX Operators ``Slice``).
"""

import numpy as np
import onnx

from models.backward_context import BackwardContext, GradFn, MultiGradFn, int_attr, str_attr, unbroadcast_dynamic
from models.errors import UnsupportedCamOp


def _axis_sizes(ctx: BackwardContext, tensors: list[str], axis: int) -> str:
    """The sizes of ``tensors`` along ``axis``, as one int64 vector."""
    index = ctx.constant([axis], np.int64)
    return ctx.emit("Concat", [ctx.emit("Gather", [ctx.emit("Shape", [t]), index], axis=0) for t in tensors], axis=0)


def _concat(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Split the output gradient back into the inputs' extents along the axis."""
    rank = ctx.rank(node.output[0])
    if rank is None:
        raise UnsupportedCamOp(f"Concat node {node.name!r} (output {node.output[0]!r}): unknown rank")
    axis = int_attr(node, "axis", 0) % rank
    inputs = list(node.input)
    pieces = ctx.fresh("concat_grad")
    names = [f"{pieces}_{index}" for index in range(len(inputs))]
    split = _axis_sizes(ctx, inputs, axis)
    ctx.nodes.append(onnx.helper.make_node("Split", [d_out, split], names, name=f"{pieces}_node", axis=axis))
    return [name if ctx.is_diff(source) else None for name, source in zip(names, inputs, strict=True)]


def _split(ctx: BackwardContext, node: onnx.NodeProto, d_outs: list[str]) -> list[str | None]:
    """Concatenate the outputs' gradients (zeros for unused outputs) along the axis."""
    rank = ctx.rank(node.input[0])
    if rank is None:
        raise UnsupportedCamOp(f"Split node {node.name!r} (output {node.output[0]!r}): unknown rank")
    axis = int_attr(node, "axis", 0) % rank
    return [ctx.emit("Concat", d_outs, axis=axis)] + [None] * (len(node.input) - 1)


def _scatter_back(ctx: BackwardContext, x: str, picked: str, d_out: str) -> str:
    """Add ``d_out`` into zeros shaped like ``x`` at the flat element indices ``picked``."""
    flat = ctx.constant([-1], np.int64)
    zeros = ctx.emit("Reshape", [ctx.zeros_like(x), flat])
    indices = ctx.emit("Reshape", [picked, flat])
    updates = ctx.emit("Reshape", [d_out, flat])
    scattered = ctx.emit("ScatterElements", [zeros, indices, updates], axis=0, reduction="add")
    return ctx.emit("Reshape", [scattered, ctx.emit("Shape", [x])])


def _element_indices(ctx: BackwardContext, x: str) -> str:
    """0 .. size(x) - 1 shaped like ``x``: the same selection applied to it names the picked elements."""
    iota = ctx.emit("Range", [ctx.constant(0, np.int64), ctx.emit("Size", [x]), ctx.constant(1, np.int64)])
    return ctx.emit("Reshape", [iota, ctx.emit("Shape", [x])])


def _slice(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    picked = ctx.emit("Slice", [_element_indices(ctx, node.input[0]), *node.input[1:]])
    return [_scatter_back(ctx, node.input[0], picked, d_out)] + [None] * (len(node.input) - 1)


def _gather(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Repeated indices add up (ScatterElements reduction "add")."""
    if ctx.is_diff(node.input[1]):
        raise UnsupportedCamOp(
            f"Gather node {node.name!r} (output {node.output[0]!r}): indices cannot be differentiated"
        )
    picked = ctx.emit("Gather", [_element_indices(ctx, node.input[0]), node.input[1]], axis=int_attr(node, "axis", 0))
    return [_scatter_back(ctx, node.input[0], picked, d_out), None]


def _pad(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    """Constant-mode padding: the gradient is the output gradient with the pads cut off."""
    if str_attr(node, "mode", "constant") != "constant":
        raise UnsupportedCamOp(f"Pad node {node.name!r} (output {node.output[0]!r}): only mode 'constant'")
    pads = ctx.static_ints(node, 1, "pads")
    rank = ctx.rank(node.input[0])
    if pads is None or rank is None or any(p < 0 for p in pads):
        raise UnsupportedCamOp(f"Pad node {node.name!r} (output {node.output[0]!r}): needs constant pads >= 0")
    axes = ctx.static_ints(node, 3, "axes") or list(range(rank))
    axes = [axis % rank for axis in axes]
    starts = ctx.constant(pads[: len(axes)], np.int64)
    extents = ctx.emit("Gather", [ctx.emit("Shape", [node.input[0]]), ctx.constant(axes, np.int64)], axis=0)
    ends = ctx.emit("Add", [starts, extents])
    grad = ctx.emit("Slice", [d_out, starts, ends, ctx.constant(axes, np.int64)])
    return [grad] + [None] * (len(node.input) - 1)


def _expand(ctx: BackwardContext, node: onnx.NodeProto, d_out: str) -> list[str | None]:
    return [unbroadcast_dynamic(ctx, d_out, node.input[0]), None]


SHAPE_OPS: dict[str, GradFn] = {"Concat": _concat, "Slice": _slice, "Gather": _gather, "Pad": _pad, "Expand": _expand}
MULTI_OUTPUT_OPS: dict[str, MultiGradFn] = {"Split": _split}
