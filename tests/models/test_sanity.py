"""The model-randomisation sanity check on a small ONNX model built here."""

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import spearmanr

from models.cam import grad_cam
from models.cam_ready import ACTIVATIONS, GRADIENTS, TARGET_CLASS
from models.sanity import (
    WeightLayer,
    cascading_randomisation,
    layers_above,
    randomise_layers,
    randomised_cam_ready,
    spearman,
    ssim,
    weight_layers,
)

CAM = "cam"


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """image [N,1,12,12] -> Conv 3x3 (6 channels) -> Relu (the CAM layer) -> GAP -> Flatten -> Gemm -> logits [N,3]."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (3, 6)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], [CAM], name="relu"),
        helper.make_node("GlobalAveragePool", [CAM], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def image() -> npt.NDArray[np.float32]:
    return np.random.default_rng(5).random((1, 1, 12, 12)).astype(np.float32)


def grad_cam_map(
    model: onnx.ModelProto, *, layers: list[WeightLayer], seed: int = 0, target: int = 0
) -> npt.NDArray[np.float32]:
    cam_ready = randomised_cam_ready(model, layers, seed=seed, cam_layer=CAM, output_name="logits")
    session = ort.InferenceSession(cam_ready.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"image": image(), TARGET_CLASS: np.array([target], dtype=np.int64)}
    acts, grads = session.run([ACTIVATIONS, GRADIENTS], feeds)
    return grad_cam(acts[0], grads[0])


def test_weight_layers_in_graph_order_with_their_biases() -> None:
    layers = weight_layers(small_cnn())
    assert layers == [
        WeightLayer("conv", "Conv", ("conv_w", "conv_b")),
        WeightLayer("fc", "Gemm", ("fc_w", "fc_b")),
    ]
    assert layers_above(small_cnn(), CAM) == [layers[1]]
    assert layers_above(small_cnn(), "image") == layers


def test_a_matmul_takes_the_add_after_it_as_its_bias() -> None:
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"), helper.make_node("Add", ["mm", "b"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weight, bias],
    )
    assert weight_layers(helper.make_model(graph)) == [WeightLayer("dense", "MatMul", ("w", "b"))]


def test_randomised_weights_keep_shape_and_scale_and_change_values() -> None:
    model = small_cnn()
    randomised = randomise_layers(model, weight_layers(model)[1:], seed=1)
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in randomised.graph.initializer}
    np.testing.assert_array_equal(after["conv_w"], before["conv_w"])  # below the randomised layer: kept
    assert after["fc_w"].shape == before["fc_w"].shape
    assert not np.allclose(after["fc_w"], before["fc_w"])
    assert after["fc_w"].std() == pytest.approx(before["fc_w"].std(), rel=0.6)
    assert before["fc_w"].std() > 0.3  # the original itself was not touched


def test_cascade_randomises_from_the_logits_down() -> None:
    model = small_cnn()
    steps = list(cascading_randomisation(model, seed=2))
    assert [layer.node for layer, _ in steps] == ["fc", "conv"]
    first, last = ({i.name: numpy_helper.to_array(i) for i in m.graph.initializer} for _, m in steps)
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(first["conv_w"], original["conv_w"])
    assert not np.allclose(last["conv_w"], original["conv_w"])
    assert not np.allclose(last["fc_w"], original["fc_w"])


def test_maps_unchanged_when_nothing_is_randomised() -> None:
    model = small_cnn()
    original = grad_cam_map(model, layers=[])
    again = grad_cam_map(model, layers=[])
    assert original.max() > 0
    assert spearman(original, again) == 1.0
    assert ssim(original, again) == pytest.approx(1.0)


def test_grad_cam_changes_when_the_head_is_randomised() -> None:
    model = small_cnn()
    original = grad_cam_map(model, layers=[])
    randomised = [grad_cam_map(model, layers=layers_above(model, CAM), seed=seed) for seed in range(6)]
    rhos = [spearman(original, cam) for cam in randomised]
    assert max(rhos) < 0.8
    assert np.mean(rhos) < 0.5  # Adebayo et al.: a map that explains the model follows its weights
    assert np.mean([ssim(original, cam) for cam in randomised]) < 0.5


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(4)
    first = rng.integers(0, 5, (6, 6)).astype(float)  # many ties
    second = first + rng.normal(0, 2, (6, 6))
    assert spearman(first, second) == pytest.approx(spearmanr(first.ravel(), second.ravel()).statistic)
    assert spearman(first, -first) == pytest.approx(-1.0)


def test_spearman_of_constant_maps() -> None:
    varying = np.arange(9.0).reshape(3, 3)
    assert spearman(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert spearman(varying, np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        spearman(varying, np.zeros((2, 2)))
