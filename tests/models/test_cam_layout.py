"""trace_layout: which axis of a CAM layer holds the channels, from the ops that fix it."""

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.cam_layout import NCHW, Layout, trace_layout

NHWC = (0, 2, 3, 1)


def _n(op: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def graph(*nodes: onnx.NodeProto) -> onnx.GraphProto:
    """Inputs "x" and "y" [N,3,4,4]; initializers "w" (conv weights) and "bias"."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, 4, 4]) for name in ("x", "y")]
    weights = [
        numpy_helper.from_array(np.ones((3, 3, 1, 1), dtype=np.float32), "w"),
        numpy_helper.from_array(np.ones((3, 1, 1), dtype=np.float32), "bias"),
    ]
    return helper.make_graph(list(nodes), "g", inputs, [], weights)


CONV = _n("Conv", ["x", "w"], "conv")
TO_NHWC = _n("Transpose", ["conv"], "nhwc", perm=[0, 2, 3, 1])

CASES: dict[str, tuple[onnx.GraphProto, Layout]] = {
    "conv": (graph(CONV, _n("Relu", ["conv"], "cam")), Layout(NCHW, "Conv node 'conv'")),
    "tf2onnx_transpose": (
        graph(CONV, TO_NHWC, _n("Relu", ["nhwc"], "cam")),
        Layout(NHWC, "Transpose node 'nhwc' after Conv node 'conv'"),
    ),
    "transposed_back": (
        graph(CONV, TO_NHWC, _n("Transpose", ["nhwc"], "cam", perm=[0, 3, 1, 2])),
        Layout(NCHW, "Transpose node 'cam' after Transpose node 'nhwc' after Conv node 'conv'"),
    ),
    "transpose_without_perm_reverses": (
        graph(CONV, _n("Transpose", ["conv"], "cam")),
        Layout((3, 2, 1, 0), "Transpose node 'cam' after Conv node 'conv'"),
    ),
    "transpose_of_another_rank": (
        graph(CONV, _n("Transpose", ["conv"], "cam", perm=[0, 2, 1])),
        Layout(None, "Transpose node 'cam' after Conv node 'conv', whose perm [0, 2, 1] does not permute 4 axes"),
    ),
    "constant_partner_does_not_count": (
        graph(CONV, _n("Add", ["bias", "conv"], "cam")),
        Layout(NCHW, "Conv node 'conv'"),
    ),
    "undeclared_partner_does_not_count": (
        graph(CONV, _n("Mul", ["y", "conv"], "cam")),
        Layout(NCHW, "Conv node 'conv'"),
    ),
    "inputs_disagree": (
        graph(CONV, TO_NHWC, _n("Add", ["conv", "nhwc"], "cam")),
        Layout(None, "Add node 'cam', whose inputs have different layouts"),
    ),
    "only_constants": (
        graph(_n("Add", ["bias", "bias"], "cam")),
        Layout(None, "Add node 'cam', which has only constant inputs"),
    ),
    "reshape": (
        graph(CONV, _n("Flatten", ["conv"], "cam")),
        Layout(None, "Flatten node 'cam', which can change the layout"),
    ),
    "undeclared_input": (
        graph(_n("Relu", ["x"], "cam")),
        Layout(None, "model input 'x', whose layout is not declared"),
    ),
    "undeclared_input_transposed": (
        graph(_n("Transpose", ["x"], "cam", perm=[0, 3, 1, 2])),
        Layout(None, "model input 'x', whose layout is not declared"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trace_layout(case: str) -> None:
    traced_graph, expected = CASES[case]
    assert trace_layout(traced_graph, "cam") == expected


def test_declared_input_layout_is_followed_through_transposes() -> None:
    nhwc_input = graph(_n("Relu", ["x"], "cam"), _n("Transpose", ["x"], "nchw", perm=[0, 3, 1, 2]))
    assert trace_layout(nhwc_input, "cam", {"x": NHWC}) == Layout(NHWC, "model input 'x'")
    assert trace_layout(nhwc_input, "nchw", {"x": NHWC}) == Layout(NCHW, "Transpose node 'nchw' after model input 'x'")


def test_a_model_input_asked_for_directly() -> None:
    assert trace_layout(graph(), "x").permutation is None
    assert trace_layout(graph(), "x", {"x": NCHW}).permutation == NCHW


@pytest.mark.parametrize(
    ("permutation", "name"),
    [(NCHW, "NCHW"), (NHWC, "NHWC"), ((0, 1, 3, 2), "NCHW axes [0, 1, 3, 2]"), (None, "unknown")],
)
def test_layout_names(permutation: tuple[int, ...] | None, name: str) -> None:
    assert Layout(permutation, "somewhere").name == name
