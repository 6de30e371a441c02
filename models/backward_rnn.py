"""LSTM and GRU lowered to elementary ONNX ops, so the CAM-ready builder can differentiate them.

A recurrent node with a static sequence length is unrolled into MatMul/Add/Split/Sigmoid/
Tanh/Mul per step, following the equations of ONNX Operators ``LSTM`` (gate order i, o, f,
c) and ``GRU`` (z, r, h; both ``linear_before_reset`` forms), in the forward, reverse and
bidirectional directions with the default activations. The lowered nodes replace the
original one before differentiation, so forward and backward use the same graph. Peepholes,
``clip``, ``input_forget``, ``sequence_lens``, ``layout`` 1 and other activations are refused.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from models.backward_context import BackwardContext, Shape, attr, int_attr, str_attr
from models.errors import UnsupportedCamOp

RECURRENT_OPS = frozenset({"LSTM", "GRU"})
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3}


def lower_recurrent(
    graph: onnx.GraphProto, shapes: Mapping[str, Shape | None], constants: Mapping[str, npt.NDArray[Any]]
) -> None:
    """Replace every LSTM and GRU node of ``graph`` (in place) by its unrolled equivalent."""
    if not any(node.op_type in RECURRENT_OPS for node in graph.node):
        return
    ctx = BackwardContext(shapes=shapes, differentiable=set(), constants=constants, prefix="camready/rnn/")
    lowered: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in RECURRENT_OPS:
            lowered.append(node)
            continue
        done = len(ctx.nodes)
        _unroll(ctx, node)
        lowered.extend(ctx.nodes[done:])
    graph.initializer.extend(ctx.initializers)
    del graph.node[:]
    graph.node.extend(lowered)
    _drop_unused_initializers(graph)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """The original W, R, B live on as transposed per-direction copies; keep one copy of the weights."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # a subgraph may read an initializer by name
    used = {name for node in graph.node for name in node.input} | {info.name for info in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _refuse(node: onnx.NodeProto, why: str) -> UnsupportedCamOp:
    return UnsupportedCamOp(f"{node.op_type} node {node.name!r} (output {node.output[0]!r}) cannot be lowered: {why}")


def _check(node: onnx.NodeProto, shapes: Mapping[str, Shape | None]) -> int:
    """The static sequence length, after refusing every form the lowering does not cover."""
    activations = attr(node, "activations", None)
    directions = 2 if str_attr(node, "direction", "forward") == "bidirectional" else 1
    if activations is not None and [a.decode() for a in activations] != _DEFAULT_ACTIVATIONS[node.op_type] * directions:  # type: ignore[attr-defined]
        raise _refuse(node, "only the default activations are supported")
    if attr(node, "clip", None) is not None or int_attr(node, "input_forget", 0) or int_attr(node, "layout", 0):
        raise _refuse(node, "clip, input_forget and layout=1 are not supported")
    if (len(node.input) > 4 and node.input[4]) or (len(node.input) > 7 and node.input[7]):
        raise _refuse(node, "sequence_lens and peepholes are not supported")
    shape = shapes.get(node.input[0])
    if shape is None or not isinstance(shape[0], int):
        raise _refuse(node, f"the sequence length of {node.input[0]!r} must be static, got {shape}")
    return shape[0]


def _weights(ctx: BackwardContext, node: onnx.NodeProto, direction: int) -> tuple[str, str, npt.NDArray[Any]]:
    """(W^T, R^T, [Wb, Rb]) of one direction; the weights must be constants."""
    values = [ctx.constants.get(name) for name in node.input[1:3]]
    if values[0] is None or values[1] is None:
        raise _refuse(node, "W and R must be constants")
    w, r = (np.asarray(v, np.float32)[direction] for v in values)
    gates = _GATES[node.op_type]
    bias = ctx.constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if len(node.input) > 3 and node.input[3] and bias is None:
        raise _refuse(node, "B must be a constant")
    both = np.zeros((2, r.shape[0]), np.float32) if bias is None else np.asarray(bias, np.float32)[direction]
    return ctx.constant(w.T), ctx.constant(r.T), both.reshape(2, gates, -1)


def _split(ctx: BackwardContext, tensor: str, parts: int, hidden: int) -> list[str]:
    """``parts`` gates of ``hidden`` units each, along the last axis (sizes as an input: opsets 13 to 18)."""
    base = ctx.fresh("gates")
    names = [f"{base}_{index}" for index in range(parts)]
    sizes = ctx.constant([hidden] * parts, np.int64)
    ctx.nodes.append(helper.make_node("Split", [tensor, sizes], names, name=f"{base}_node", axis=-1))
    return names


def _initial(ctx: BackwardContext, node: onnx.NodeProto, index: int, direction: int, hidden: int) -> str:
    """initial_h / initial_c of one direction, or zeros [batch, hidden]."""
    if len(node.input) > index and node.input[index]:
        return ctx.emit("Gather", [node.input[index], ctx.constant(direction, np.int64)], axis=0)
    batch = ctx.emit("Gather", [ctx.emit("Shape", [node.input[0]]), ctx.constant([1], np.int64)], axis=0)
    size = ctx.emit("Concat", [batch, ctx.constant([hidden], np.int64)], axis=0)
    return ctx.emit("ConstantOfShape", [size], value=onnx.numpy_helper.from_array(np.zeros(1, np.float32)))


def _lstm_step(ctx: BackwardContext, x_gates: str, h: str, c: str, r_t: str, hidden: int) -> tuple[str, str]:
    """i, o, f = sigma(.); c~ = tanh(.); C = f C + i c~; H = o tanh(C)."""
    i, o, f, g = _split(ctx, ctx.emit("Add", [x_gates, ctx.emit("MatMul", [h, r_t])]), 4, hidden)
    i, o, f = (ctx.emit("Sigmoid", [gate]) for gate in (i, o, f))
    c = ctx.emit("Add", [ctx.emit("Mul", [f, c]), ctx.emit("Mul", [i, ctx.emit("Tanh", [g])])])
    return ctx.emit("Mul", [o, ctx.emit("Tanh", [c])]), c


def _gru_step(ctx: BackwardContext, node: onnx.NodeProto, x_gates: str, h: str, r_t: str, r_bias: str) -> str:
    """z, r = sigma(.); h~ = tanh(x Wh + r (h Rh + Rbh)) or tanh(x Wh + (r h) Rh + Rbh); H = (1-z) h~ + z H."""
    hidden = int_attr(node, "hidden_size", 0)
    xz, xr, xh = _split(ctx, x_gates, 3, hidden)
    hz, hr, hh = _split(ctx, ctx.emit("Add", [ctx.emit("MatMul", [h, r_t]), r_bias]), 3, hidden)
    z = ctx.emit("Sigmoid", [ctx.emit("Add", [xz, hz])])
    r = ctx.emit("Sigmoid", [ctx.emit("Add", [xr, hr])])
    if int_attr(node, "linear_before_reset", 0):
        candidate = ctx.emit("Add", [xh, ctx.emit("Mul", [r, hh])])
    else:
        r_h = ctx.emit("Slice", [r_t, *(ctx.constant([v], np.int64) for v in (2 * hidden, 3 * hidden, 1))])
        r_bh = ctx.emit("Slice", [r_bias, *(ctx.constant([v], np.int64) for v in (2 * hidden, 3 * hidden))])
        candidate = ctx.emit("Add", [xh, ctx.emit("Add", [ctx.emit("MatMul", [ctx.emit("Mul", [r, h]), r_h]), r_bh])])
    candidate = ctx.emit("Tanh", [candidate])
    keep = ctx.emit("Sub", [ctx.constant(1.0), z])
    return ctx.emit("Add", [ctx.emit("Mul", [keep, candidate]), ctx.emit("Mul", [z, h])])


def _direction(ctx: BackwardContext, node: onnx.NodeProto, direction: int, steps: int, reverse: bool) -> list[str]:
    """[Y of this direction [seq, 1, batch, H], last H, last C (LSTM)]."""
    hidden = int_attr(node, "hidden_size", 0)
    w_t, r_t, bias = _weights(ctx, node, direction)
    is_lstm = node.op_type == "LSTM"
    x_bias = (bias[0] + bias[1]) if is_lstm else bias[0]
    x_gates = ctx.emit("Add", [ctx.emit("MatMul", [node.input[0], w_t]), ctx.constant(x_bias.reshape(-1))])
    h = _initial(ctx, node, 5, direction, hidden)
    c = _initial(ctx, node, 6, direction, hidden) if is_lstm else ""
    r_bias = "" if is_lstm else ctx.constant(bias[1].reshape(-1))
    outputs: dict[int, str] = {}
    for step in reversed(range(steps)) if reverse else range(steps):
        x_step = ctx.emit("Gather", [x_gates, ctx.constant(step, np.int64)], axis=0)
        if is_lstm:
            h, c = _lstm_step(ctx, x_step, h, c, r_t, hidden)
        else:
            h = _gru_step(ctx, node, x_step, h, r_t, r_bias)
        outputs[step] = h
    stacked = [ctx.emit("Unsqueeze", [outputs[step], ctx.constant([0, 1], np.int64)]) for step in range(steps)]
    return [ctx.emit("Concat", stacked, axis=0), h, c]


def _unroll(ctx: BackwardContext, node: onnx.NodeProto) -> None:
    steps = _check(node, ctx.shapes)
    mode = str_attr(node, "direction", "forward")
    plans = [(0, mode == "reverse")] + ([(1, True)] if mode == "bidirectional" else [])
    results = [_direction(ctx, node, direction, steps, reverse) for direction, reverse in plans]
    first_axis = ctx.constant([0], np.int64)
    merged = [
        ctx.emit("Concat", [r[0] for r in results], axis=1),
        ctx.emit("Concat", [ctx.emit("Unsqueeze", [r[1], first_axis]) for r in results], axis=0),
    ]
    if node.op_type == "LSTM":
        merged.append(ctx.emit("Concat", [ctx.emit("Unsqueeze", [r[2], first_axis]) for r in results], axis=0))
    for source, target in zip(merged, node.output, strict=False):
        if target:
            ctx.nodes.append(helper.make_node("Identity", [source], [target], name=f"{node.name}/lowered/{target}"))
