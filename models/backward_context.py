"""The workspace backward functions write into: static shapes, fresh names, new nodes."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

Dim = int | str | None
Shape = tuple[Dim, ...]
GradFn = Callable[["BackwardContext", onnx.NodeProto, str], list[str | None]]


@dataclass
class BackwardContext:
    """What backward functions need: static shapes, which tensors carry gradient, a node sink."""

    shapes: Mapping[str, Shape | None]
    differentiable: set[str]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"camready/{hint}_{self._count}"

    def emit(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """Append one node and return the name of its (first) output."""
        output = self.fresh(op_type.lower())
        name = self.fresh(f"{op_type}_node")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def constant(self, value: npt.ArrayLike, dtype: type[np.generic] = np.float32) -> str:
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def accumulate(self, grads: list[str]) -> str:
        return grads[0] if len(grads) == 1 else self.emit("Sum", grads)

    def is_diff(self, tensor: str) -> bool:
        return tensor in self.differentiable


def attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _covers(target: Shape | None, other: Shape | None) -> bool:
    """True when ``target`` provably already has the broadcast shape of (target, other)."""
    if target is None or other is None or len(other) > len(target):
        return False
    aligned = target[len(target) - len(other) :]
    return all(od == 1 or (td is not None and td == od) for td, od in zip(aligned, other, strict=True))


def unbroadcast_dynamic(ctx: BackwardContext, grad: str, target: str) -> str:
    """Sum ``grad`` over the axes NumPy broadcasting stretched to reach ``target``'s shape."""
    target_shape = ctx.emit("Shape", [target])
    grad_shape = ctx.emit("Shape", [grad])
    gap = ctx.emit("Sub", [ctx.emit("Size", [grad_shape]), ctx.emit("Size", [target_shape])])
    ones = ctx.emit(
        "ConstantOfShape",
        [ctx.emit("Reshape", [gap, ctx.constant([1], np.int64)])],
        value=numpy_helper.from_array(np.array([1], dtype=np.int64)),
    )
    padded = ctx.emit("Concat", [ones, target_shape], axis=0)
    stretched = ctx.emit("Not", [ctx.emit("Equal", [padded, grad_shape])])
    axes = ctx.emit("Reshape", [ctx.emit("NonZero", [stretched]), ctx.constant([-1], np.int64)])
    summed = ctx.emit("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
    return ctx.emit("Reshape", [summed, target_shape])


def unbroadcast(ctx: BackwardContext, grad: str, target: str, other: str) -> str:
    """Gradient of a broadcasting binary op reduced to ``target``; free when shapes agree."""
    if _covers(ctx.shapes.get(target), ctx.shapes.get(other)):
        return grad
    return unbroadcast_dynamic(ctx, grad, target)
