"""Which nodes carry gradient to the class score, and the default CAM layer they imply.

A tensor is differentiable when it depends on a source (the CAM layer, or the model input
for input gradients) through ops with real-valued outputs; the path is the differentiable
nodes the score depends on. Grad-CAM (Selvaraju et al. 2017, section 3) explains the last
convolutional feature map, so the default CAM layer is the last rank-4 tensor on the path
from the model input to the score.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import numpy.typing as npt
import onnx
from onnx import numpy_helper

from models.backward_context import Shape
from models.cam_layout import LAYOUTS, trace_layouts
from models.errors import ModelContractError

NON_DIFFERENTIABLE_OUTPUT = frozenset(
    {
        *("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "GreaterOrEqual"),
        *("Less", "LessOrEqual", "Not", "IsNaN", "IsInf"),
    }
)


def static_shapes(model: onnx.ModelProto, *, data_prop: bool = False) -> dict[str, Shape | None]:
    """ONNX shape inference: every tensor's shape, dims symbolic (str) or unknown (None) where not static."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    shapes: dict[str, Shape | None] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            shapes[info.name] = None
            continue
        shapes[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
    for initializer in graph.initializer:
        shapes[initializer.name] = tuple(int(d) for d in initializer.dims)
    return shapes


def unit_batch_shapes(model: onnx.ModelProto) -> dict[str, Shape | None]:
    """Shapes with a dynamic batch axis of every input fixed to 1 and Shape values propagated, so sizes
    computed from the input's shape (a ``flatten(2)`` Reshape's sequence length) become static."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for info in fixed.graph.input:
        dims = info.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    return static_shapes(fixed, data_prop=True)


def graph_constants(graph: onnx.GraphProto) -> dict[str, npt.NDArray[Any]]:
    """Initializers and ``Constant`` node values: the tensors whose values are known before any run."""
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return constants


def model_input(graph: onnx.GraphProto) -> str:
    """The first graph input that is not an initializer (the image)."""
    initializers = {init.name for init in graph.initializer}
    names = [info.name for info in graph.input if info.name not in initializers]
    if not names:
        raise ModelContractError("the model has no input")
    return str(names[0])


def differentiable_tensors(nodes: Iterable[onnx.NodeProto], sources: Iterable[str]) -> set[str]:
    """Tensors that depend on ``sources`` through real-valued outputs (MaxPool Indices excluded)."""
    differentiable = set(sources)
    for node in nodes:
        if node.op_type in NON_DIFFERENTIABLE_OUTPUT or not any(name in differentiable for name in node.input):
            continue
        outputs = node.output[:1] if node.op_type == "MaxPool" else node.output
        differentiable.update(name for name in outputs if name)
    return differentiable


def path_nodes(
    nodes: Sequence[onnx.NodeProto], differentiable: set[str], score: str
) -> tuple[list[onnx.NodeProto], set[str]]:
    """(nodes in graph order that carry gradient to ``score``, every tensor they need a gradient for)."""
    needed = {score}
    path: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if not any(out in needed for out in node.output) or not any(i in differentiable for i in node.input):
            continue
        path.append(node)
        needed.update(i for i in node.input if i in differentiable)
    return path[::-1], needed


def class_score(graph: onnx.GraphProto, output_name: str) -> str:
    """The tensor differentiated: the input of a final Softmax, else the output itself."""
    producer = next((node for node in graph.node if output_name in node.output), None)
    return producer.input[0] if producer is not None and producer.op_type == "Softmax" else output_name


def default_cam_layer(model: onnx.ModelProto, output_name: str) -> str:
    """The last rank-4 tensor (static shape inference) on the differentiable path from the input to the score.

    Preferred, when there is one: a feature map, i.e. a tensor whose layout traces to NCHW or NHWC
    (``models.cam_layout``; a rows-first permute feeding an LSTM is not one) and whose static spatial
    size is not 1 x 1 (a global pool's [N, C, 1, 1] output is rank 4 but holds no map).
    """
    graph = model.graph
    shapes = static_shapes(model)
    source = model_input(graph)
    differentiable = differentiable_tensors(graph.node, [source])
    path, needed = path_nodes(list(graph.node), differentiable, class_score(graph, output_name))
    candidates = [source] + [out for node in path for out in node.output if out in needed]
    rank4 = [name for name in candidates if len(shapes.get(name) or ()) == 4]
    layouts = trace_layouts(graph)
    maps = [name for name in rank4 if name in layouts and layouts[name].permutation in LAYOUTS.values()]
    spatial = [name for name in maps if tuple((shapes[name] or ())[2:]) != (1, 1)]
    rank4 = spatial or maps or rank4
    if not rank4:
        raise ModelContractError(
            f"no rank-4 tensor lies between input {source!r} and output {output_name!r}; set cam_layer in the manifest"
        )
    return str(rank4[-1])
