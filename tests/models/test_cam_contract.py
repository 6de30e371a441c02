"""make_cam_ready refuses, up front, models that break the contract of the form it builds."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from models.cam_head import _FLOAT64_OPS
from models.cam_ready import make_cam_ready
from models.errors import ModelContractError

X = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)


def classifier(
    *, cam: str = "cam", hidden: str = "f", probs: str = "probs", extra: list[onnx.NodeProto] | None = None
) -> onnx.ModelProto:
    """x [N,3,6,6] -> Relu -> ``cam`` -> Flatten -> ``hidden`` -> Gemm -> logits [N,4] (-> ``extra``) -> Softmax."""
    nodes = [
        helper.make_node("Relu", ["x"], [cam], name="relu"),
        helper.make_node("Flatten", [cam], [hidden], name="flatten"),
        helper.make_node("Gemm", [hidden, "w"], ["logits"], name="gemm"),
        *(extra or []),
        helper.make_node("Softmax", [extra[-1].output[0] if extra else "logits"], [probs], name="softmax", axis=-1),
    ]
    weights = np.random.default_rng(4).standard_normal((108, 4)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(probs, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([1]), "axis1")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = ["probabilities", "activations", "gradients"]
    return list(session.run(outputs, {"x": X, "target_class": np.array([1, -1])}))


@pytest.mark.parametrize("name", ["gradients", "target_class", "camready/flat"])
def test_model_tensor_with_a_reserved_name(name: str) -> None:
    with pytest.raises(ModelContractError, match=f"already has tensors named \\['{name}'\\]"):
        make_cam_ready(classifier(hidden=name), cam_layer="cam", output_name="probs")


def test_model_input_named_target_class() -> None:
    model = classifier()
    model.graph.input.append(helper.make_tensor_value_info("target_class", TensorProto.INT64, ["N"]))
    with pytest.raises(ModelContractError, match=r"already has tensors named \['target_class'\]"):
        make_cam_ready(model, cam_layer="cam", output_name="probs")


@pytest.mark.parametrize(("hidden", "role"), [("probabilities", "probabilities"), ("activations", "activations")])
def test_other_tensor_named_like_an_output(hidden: str, role: str) -> None:
    with pytest.raises(ModelContractError, match=f"tensor named '{hidden}' that is not the {role} output"):
        make_cam_ready(classifier(hidden=hidden), cam_layer="cam", output_name="probs")


def test_tensors_already_named_like_their_outputs_are_kept() -> None:
    expected = run(make_cam_ready(classifier(), cam_layer="cam", output_name="probs"))
    renamed = make_cam_ready(
        classifier(cam="activations", probs="probabilities"), cam_layer="activations", output_name="probabilities"
    )
    assert [o.name for o in renamed.graph.output] == ["probabilities", "activations", "gradients"]
    for ours, reference in zip(run(renamed), expected, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_class_score_that_is_not_rank_two() -> None:
    extra = [helper.make_node("Unsqueeze", ["logits", "axis1"], ["logits3"], name="unsqueeze")]
    with pytest.raises(ModelContractError, match=r"output 'probs' has rank 3; the class score must be \[N, K\]"):
        make_cam_ready(classifier(extra=extra), cam_layer="cam", output_name="probs")


def test_class_score_of_unknown_rank() -> None:
    model = classifier(extra=[helper.make_node("Reshape", ["logits", "shape"], ["reshaped"], name="reshape")])
    model.graph.input.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [None]))
    with pytest.raises(ModelContractError, match="rank of output 'probs' cannot be inferred"):
        make_cam_ready(model, cam_layer="cam", output_name="probs")


@pytest.mark.parametrize(("axis", "refused"), [(0, True), (-2, True), (1, False), (-1, False)])
def test_final_softmax_over_the_batch_axis(axis: int, refused: bool) -> None:
    model = classifier()
    model.graph.node[-1].attribute[0].i = axis
    if refused:
        with pytest.raises(ModelContractError, match=f"final Softmax of 'probs' is over axis {axis}"):
            make_cam_ready(model, cam_layer="cam", output_name="probs")
    else:
        make_cam_ready(model, cam_layer="cam", output_name="probs")


def _single_op_float64(op: str) -> ort.InferenceSession:
    """x [1,2,4,4] float64 -> ``op`` (constant operands float64 / int64) -> y."""
    operands = {
        "BatchNormalization": [np.ones(2)] * 4,
        "Expand": [np.array([1, 2, 4, 4])],
        "Pad": [np.zeros(8, dtype=np.int64)],
        "Split": [np.array([1, 1])],
        "Conv": [np.ones((2, 2, 3, 3))],
    }.get(op, [])
    names = [f"operand{index}" for index in range(len(operands))]
    outputs = ["y", "y2"] if op == "Split" else ["y"]
    graph = helper.make_graph(
        [
            helper.make_node(op, ["x", *names], outputs, axis=1)
            if op == "Split"
            else helper.make_node(op, ["x", *names], outputs)
        ],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(name, TensorProto.DOUBLE, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in zip(names, operands, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


NEW_FLOAT64_OPS = (
    *("BatchNormalization", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Softmax", "Split", "Pad", "Expand"),
    *("ReduceMean", "ReduceMax", "ReduceSum"),
)


@pytest.mark.parametrize("op", NEW_FLOAT64_OPS)
def test_ops_listed_as_float64_have_a_float64_kernel(op: str) -> None:
    assert op in _FLOAT64_OPS
    (result, *_) = _single_op_float64(op).run(None, {"x": np.ones((1, 2, 4, 4))})
    assert result.dtype == np.float64


@pytest.mark.parametrize("op", ["Conv", "GlobalMaxPool", "HardSigmoid", "HardSwish"])
def test_ops_without_a_float64_kernel_are_not_listed(op: str) -> None:
    assert op not in _FLOAT64_OPS
    with pytest.raises(OrtNotImplemented, match="Could not find an implementation"):
        _single_op_float64(op)
