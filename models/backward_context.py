"""The workspace backward functions write into: static shapes, fresh names, new nodes."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from models.errors import UnsupportedCamOp

Dim = int | str | None
Shape = tuple[Dim, ...]
GradFn = Callable[["BackwardContext", onnx.NodeProto, str], list[str | None]]
# Ops of several differentiable outputs (Split) get one gradient per output (zeros where none arrives).
MultiGradFn = Callable[["BackwardContext", onnx.NodeProto, list[str]], list[str | None]]


@dataclass
class BackwardContext:
    """What backward functions need: static shapes, which tensors carry gradient, a node sink."""

    shapes: Mapping[str, Shape | None]
    differentiable: set[str]
    constants: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)  # initializers and Constant outputs
    guided: bool = False  # Springenberg et al. 2015: Relu passes only positive gradients
    prefix: str = "camready/"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

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

    def zeros_like(self, tensor: str) -> str:
        """A float zero tensor of ``tensor``'s run-time shape (the gradient of an unused output)."""
        zero = numpy_helper.from_array(np.zeros(1, np.float32))
        return self.emit("ConstantOfShape", [self.emit("Shape", [tensor])], value=zero)

    def static_ints(self, node: onnx.NodeProto, index: int, what: str) -> list[int] | None:
        """The constant int64 values of input ``index`` (``None`` when absent); refuse a computed one."""
        if len(node.input) <= index or not node.input[index]:
            return None
        value = self.constants.get(node.input[index])
        if value is None:
            raise UnsupportedCamOp(
                f"{node.op_type} node {node.name!r} (output {node.output[0]!r}): its {what} must be a constant"
            )
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def static_dims(self, tensor: str, node: onnx.NodeProto) -> list[int]:
        """Every dim after the batch axis of ``tensor``, which must be known statically."""
        shape = self.shapes.get(tensor)
        if shape is None or not all(isinstance(d, int) for d in shape[1:]):
            raise UnsupportedCamOp(
                f"{node.op_type} node {node.name!r} (output {node.output[0]!r}): the shape of {tensor!r} "
                f"must be static past the batch axis, got {shape}"
            )
        return [int(d) for d in shape[1:]]  # type: ignore[arg-type]


def attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def where(node: onnx.NodeProto) -> str:
    """How refusals name a node: op type, node name and its (first) output tensor."""
    output = node.output[0] if node.output else ""
    return f"{node.op_type} node {node.name!r} (output {output!r})"


def int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    value: int = int(attr(node, name, default))  # type: ignore[call-overload]
    return value


def ints_attr(node: onnx.NodeProto, name: str) -> list[int] | None:
    value = attr(node, name, None)
    return None if value is None else [int(v) for v in value]  # type: ignore[attr-defined]


def str_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def axes_of(ctx: "BackwardContext", node: onnx.NodeProto) -> list[int] | None:
    """Reduce axes: the ``axes`` attribute (opsets < 18) or the second input (opset 18, ReduceSum 13)."""
    from_input = ctx.static_ints(node, 1, "axes input")
    return from_input if from_input is not None else ints_attr(node, "axes")


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
