"""Where the channel axis of a 4-D tensor lies, traced forward from the ops that fix it.

ONNX defines convolution, pooling and normalisation on NCHW tensors (ONNX Operators:
``Conv``, ``MaxPool``, ``BatchNormalization``...), so their outputs are NCHW by
definition; element-wise ops keep the layout of their inputs and a ``Transpose``
permutes it. tf2onnx exports of Keras (NHWC) models wrap the convolutions in Transposes,
so a CAM layer taken after such a Transpose is NHWC although its shape cannot tell
(height, width and channels may be equal). A model input has the layout its manifest
declares; any other op (``Reshape``, ``Flatten``...) leaves the layout unknown.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from models.backward_context import attr

Permutation = tuple[int, ...]  # a tensor of layout p holds nchw.transpose(p)
NCHW: Permutation = (0, 1, 2, 3)
LAYOUTS: dict[str, Permutation] = {"NCHW": NCHW, "NHWC": (0, 2, 3, 1)}

_NCHW_OPS = frozenset(
    {
        *("Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv", "BatchNormalization"),
        *("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"),
        *("InstanceNormalization", "LRN", "MaxUnpool", "DepthToSpace", "SpaceToDepth"),
    }
)
_LAYOUT_KEEPING_OPS = frozenset(
    {
        *("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "ThresholdedRelu", "Shrink", "Mish"),
        *("Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Clip", "Erf", "Sign"),
        *("Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Floor", "Ceil", "Round"),
        *("Add", "Sub", "Mul", "Div", "Max", "Min", "Mean", "Sum", "Where", "Identity", "Dropout", "Cast"),
        *("Concat", "Split", "Slice", "Pad", "Resize", "Upsample", "QuantizeLinear", "DequantizeLinear"),
    }
)


@dataclass(frozen=True)
class Layout:
    """A tensor's layout as a permutation of NCHW, or ``None`` when unknown; ``source``
    says which node or input fixed it, or where the trace lost it."""

    permutation: Permutation | None
    source: str

    @property
    def name(self) -> str:
        """ "NCHW", "NHWC", the permutation of another order, or "unknown"."""
        if self.permutation is None:
            return "unknown"
        named = {permutation: name for name, permutation in LAYOUTS.items()}
        return named.get(self.permutation, f"NCHW axes {list(self.permutation)}")


def trace_layout(graph: onnx.GraphProto, tensor: str, inputs: Mapping[str, Permutation] | None = None) -> Layout:
    """The layout of ``tensor``; ``inputs`` declares the layouts of model inputs.

    One pass in graph order (ONNX nodes are topologically sorted). An op of several
    inputs takes the layout its traced inputs agree on; constants (initializers,
    ``Constant`` outputs) are broadcast partners and do not count.
    """
    constants = {init.name for init in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    known = {name: Layout(permutation, f"model input {name!r}") for name, permutation in (inputs or {}).items()}
    for node in graph.node:
        if tensor in known:
            break
        traced = [known.get(name) or _undeclared(name) for name in node.input if name and name not in constants]
        layout = _node_layout(node, traced)
        known.update((name, layout) for name in node.output if name)
    return known.get(tensor) or _undeclared(tensor)


def trace_layouts(graph: onnx.GraphProto, inputs: Mapping[str, Permutation] | None = None) -> dict[str, Layout]:
    """The layout of every tensor ``trace_layout`` reaches, in one pass over the whole graph."""
    constants = {init.name for init in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    known = {name: Layout(permutation, f"model input {name!r}") for name, permutation in (inputs or {}).items()}
    for node in graph.node:
        traced = [known.get(name) or _undeclared(name) for name in node.input if name and name not in constants]
        layout = _node_layout(node, traced)
        known.update((name, layout) for name in node.output if name)
    return known


def _undeclared(name: str) -> Layout:
    return Layout(None, f"model input {name!r}, whose layout is not declared")


def _node_layout(node: onnx.NodeProto, traced: list[Layout]) -> Layout:
    where = f"{node.op_type} node {node.name!r}"
    if node.op_type in _NCHW_OPS:
        return Layout(NCHW, where)
    if node.op_type not in _LAYOUT_KEEPING_OPS | {"Transpose"}:
        return Layout(None, f"{where}, which can change the layout")
    layouts = [layout for layout in traced if layout.permutation is not None]
    if not layouts:
        return traced[0] if traced else Layout(None, f"{where}, which has only constant inputs")
    if len({layout.permutation for layout in layouts}) > 1:
        return Layout(None, f"{where}, whose inputs have different layouts")
    if node.op_type == "Transpose":
        return _transposed(node, layouts[0].permutation, f"{where} after {layouts[0].source}")
    return layouts[0]


def _transposed(node: onnx.NodeProto, permutation: Permutation | None, source: str) -> Layout:
    """Transpose semantics: output axis i is input axis perm[i] (default: reversed axes)."""
    rank = len(permutation or ())
    perm = tuple(int(axis) for axis in attr(node, "perm", range(rank - 1, -1, -1)))  # type: ignore[attr-defined]
    if permutation is None or sorted(perm) != list(range(rank)):
        return Layout(None, f"{source}, whose perm {list(perm)} does not permute {rank} axes")
    return Layout(tuple(permutation[axis] for axis in perm), source)
