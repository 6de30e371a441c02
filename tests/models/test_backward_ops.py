"""Each backward rule against torch autograd on the same function (torch in float64).

A small ONNX graph "x" -> Identity -> "cam" -> (the op under test) -> Flatten -> MatMul ->
"logits" is made CAM-ready; its gradient of logits[n, t_n] over "cam" must equal autograd's
on the same function written with torch ops (and its forward pass, the soft-maxed logits,
must equal torch's, which checks that the reference computes the same function).
"""

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from models.backward_activations import ACTIVATION_OPS
from models.backward_context import BackwardContext
from models.cam_ready import make_cam_ready
from models.errors import UnsupportedCamOp

Params = dict[str, torch.Tensor]
TorchFn = Callable[[torch.Tensor, Params], torch.Tensor]
CLASSES = 3
TARGETS = [0, 2]
RELATIVE = 1e-5  # of the largest reference gradient


def _w(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _n(op: str, inputs: list[str], outputs: str | list[str], **attrs: object) -> onnx.NodeProto:
    names = [outputs] if isinstance(outputs, str) else outputs
    return helper.make_node(op, inputs, names, name=f"{op}_{names[0]}", **attrs)


def _conv(
    x: torch.Tensor, w: torch.Tensor, pads: list[int], stride: int = 1, dilation: int = 1, groups: int = 1
) -> torch.Tensor:
    """ONNX pads [top, left, bottom, right] made explicit with F.pad, then an unpadded conv."""
    padded = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    return F.conv2d(padded, w, stride=stride, dilation=dilation, groups=groups)


def _same(size: int, kernel: int, stride: int, upper: bool) -> tuple[int, int]:
    """TensorFlow 'SAME': out = ceil(in / s); the odd pixel goes at the end (UPPER) or start (LOWER)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2) if upper else (total - total // 2, total // 2)


def _same_conv(x: torch.Tensor, w: torch.Tensor, upper: bool) -> torch.Tensor:
    (top, bottom), (left, right) = (_same(x.shape[d], 3, 2, upper) for d in (2, 3))
    return _conv(x, w, [top, left, bottom, right], stride=2)


def _clip_torch(x: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    return torch.clamp(x, min=low, max=high)


CASES: dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray], tuple[int, ...], TorchFn, int]] = {
    "conv_stride_dilation_asymmetric_pads": (
        [_n("Conv", ["cam", "w", "b"], "y", strides=[2, 2], dilations=[2, 2], pads=[1, 0, 2, 1])],
        {"w": _w(4, 3, 3, 3), "b": _w(4, seed=1)},
        (2, 3, 9, 8),
        lambda x, p: _conv(x, p["w"], [1, 0, 2, 1], stride=2, dilation=2) + p["b"].view(1, -1, 1, 1),
        17,
    ),
    "conv_grouped": (
        [_n("Conv", ["cam", "w"], "y", group=2, pads=[1, 1, 1, 1])],
        {"w": _w(6, 2, 3, 3)},
        (2, 4, 5, 5),
        lambda x, p: _conv(x, p["w"], [1, 1, 1, 1], groups=2),
        17,
    ),
    "conv_depthwise_strided": (
        [_n("Conv", ["cam", "w"], "y", group=4, strides=[2, 2], kernel_shape=[3, 3])],
        {"w": _w(8, 1, 3, 3)},
        (2, 4, 8, 7),
        lambda x, p: _conv(x, p["w"], [0, 0, 0, 0], stride=2, groups=4),
        17,
    ),
    "conv_same_upper": (
        [_n("Conv", ["cam", "w"], "y", auto_pad="SAME_UPPER", strides=[2, 2])],
        {"w": _w(4, 3, 3, 3)},
        (2, 3, 8, 7),
        lambda x, p: _same_conv(x, p["w"], upper=True),
        17,
    ),
    "conv_same_lower": (
        [_n("Conv", ["cam", "w"], "y", auto_pad="SAME_LOWER", strides=[2, 2])],
        {"w": _w(4, 3, 3, 3)},
        (2, 3, 8, 7),
        lambda x, p: _same_conv(x, p["w"], upper=False),
        17,
    ),
    "conv_valid_leftover_rows": (
        [_n("Conv", ["cam", "w"], "y", auto_pad="VALID", strides=[2, 2])],
        {"w": _w(4, 3, 3, 3)},
        (2, 3, 8, 8),
        lambda x, p: F.conv2d(x, p["w"], stride=2),
        17,
    ),
    "conv_transpose_grouped_output_padding": (
        [_n("ConvTranspose", ["cam", "w"], "y", group=3, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])],
        {"w": _w(3, 2, 3, 3)},
        (2, 3, 4, 5),
        lambda x, p: F.conv_transpose2d(x, p["w"], stride=2, padding=1, output_padding=1, groups=3),
        17,
    ),
    "conv_transpose_valid_dilated": (
        [_n("ConvTranspose", ["cam", "w"], "y", auto_pad="VALID", strides=[2, 2], dilations=[2, 2])],
        {"w": _w(3, 2, 3, 3)},
        (2, 3, 4, 3),
        lambda x, p: F.conv_transpose2d(x, p["w"], stride=2, dilation=2),
        17,
    ),
    "batch_normalization": (
        [_n("BatchNormalization", ["cam", "s", "bb", "m", "v"], "y", epsilon=1e-3)],
        {"s": _w(3), "bb": _w(3, seed=1), "m": _w(3, seed=2), "v": np.abs(_w(3, seed=3)) + 0.1},
        (2, 3, 4, 4),
        lambda x, p: F.batch_norm(x, p["m"], p["v"], p["s"], p["bb"], training=False, eps=1e-3),
        17,
    ),
    "leaky_relu": (
        [_n("LeakyRelu", ["cam"], "y", alpha=0.1)],
        {},
        (2, 3, 4, 4),
        lambda x, p: F.leaky_relu(x, 0.1),
        17,
    ),
    "clip_min_and_max_inputs": (
        [_n("Clip", ["cam", "lo", "hi"], "y")],
        {"lo": np.float32(-0.5), "hi": np.float32(0.7)},
        (2, 3, 4, 4),
        lambda x, p: _clip_torch(x, -0.5, 0.7),
        17,
    ),
    "clip_max_only": (
        [_n("Clip", ["cam", "", "hi"], "y")],
        {"hi": np.float32(0.3)},
        (2, 3, 4, 4),
        lambda x, p: _clip_torch(x, None, 0.3),
        17,
    ),
    "clip_without_bounds": ([_n("Clip", ["cam"], "y")], {}, (2, 3, 4, 4), lambda x, p: x, 17),
    "sigmoid": ([_n("Sigmoid", ["cam"], "y")], {}, (2, 3, 4, 4), lambda x, p: torch.sigmoid(x), 17),
    "tanh": ([_n("Tanh", ["cam"], "y")], {}, (2, 3, 4, 4), lambda x, p: torch.tanh(x), 17),
    "hard_sigmoid": (
        [_n("HardSigmoid", ["cam"], "y", alpha=0.4, beta=0.45)],
        {},
        (2, 3, 4, 4),
        lambda x, p: torch.clamp(0.4 * x + 0.45, 0.0, 1.0),
        17,
    ),
    "hard_swish_all_three_pieces": (
        [_n("Mul", ["cam", "four"], "m"), _n("HardSwish", ["m"], "y")],
        {"four": np.float32(4.0)},
        (2, 3, 4, 4),
        lambda x, p: F.hardswish(4.0 * x),
        17,
    ),
    "softmax_mid_graph": (
        [_n("Softmax", ["cam"], "s", axis=1), _n("Mul", ["s", "cam"], "y")],
        {},
        (2, 3, 4, 4),
        lambda x, p: torch.softmax(x, dim=1) * x,
        17,
    ),
    "global_max_pool": ([_n("GlobalMaxPool", ["cam"], "y")], {}, (2, 3, 4, 5), lambda x, p: x.amax(dim=(2, 3)), 17),
    "reduce_mean_attribute_keepdims0": (
        [_n("ReduceMean", ["cam"], "y", axes=[1, -1], keepdims=0)],
        {},
        (2, 3, 4, 5),
        lambda x, p: x.mean(dim=(1, 3)),
        17,
    ),
    "reduce_max_attribute_keepdims1": (
        [_n("ReduceMax", ["cam"], "r", axes=[1], keepdims=1), _n("Mul", ["r", "cam"], "y")],
        {},
        (2, 3, 4, 5),
        lambda x, p: x.amax(dim=1, keepdim=True) * x,
        17,
    ),
    "reduce_sum_input_keepdims0": (
        [_n("ReduceSum", ["cam", "ax"], "y", keepdims=0)],
        {"ax": _i(2)},
        (2, 3, 4, 5),
        lambda x, p: x.sum(dim=2),
        17,
    ),
    "reduce_mean_input_opset18": (
        [_n("ReduceMean", ["cam", "ax"], "y", keepdims=1)],
        {"ax": _i(1)},
        (2, 3, 4, 5),
        lambda x, p: x.mean(dim=1, keepdim=True),
        18,
    ),
    "reduce_max_input_opset18_keepdims0": (
        [_n("ReduceMax", ["cam", "ax"], "y", keepdims=0)],
        {"ax": _i(1, 2)},
        (2, 3, 4, 5),
        lambda x, p: x.amax(dim=(1, 2)),
        18,
    ),
    "concat_of_two_branches": (
        [_n("Sigmoid", ["cam"], "s"), _n("Concat", ["cam", "s", "cam"], "y", axis=1)],
        {},
        (2, 3, 4, 4),
        lambda x, p: torch.cat([x, torch.sigmoid(x), x], dim=1),
        17,
    ),
    "split_unequal_one_output_unused": (
        [_n("Split", ["cam", "parts"], ["a", "b", "c"], axis=1), _n("Mul", ["a", "c"], "y")],
        {"parts": _i(2, 1, 2)},
        (2, 5, 3, 3),
        lambda x, p: x[:, :2] * x[:, 3:],
        17,
    ),
    "slice_negative_steps_and_axes": (
        [_n("Slice", ["cam", "st", "en", "ax", "sp"], "y")],
        {"st": _i(-1, 1), "en": _i(-100, 100), "ax": _i(3, 2), "sp": _i(-2, 2)},
        (2, 3, 5, 6),
        lambda x, p: x[:, :, 1::2].flip(3)[..., ::2],
        17,
    ),
    "gather_repeated_indices": (
        [_n("Gather", ["cam", "idx"], "y", axis=1)],
        {"idx": _i(2, 0, 2)},
        (2, 3, 4, 4),
        lambda x, p: x[:, [2, 0, 2]],
        17,
    ),
    "pad_constant": (
        [_n("Pad", ["cam", "pads", "value"], "y", mode="constant")],
        {"pads": _i(0, 0, 1, 2, 0, 0, 2, 1), "value": np.float32(0.5)},
        (2, 3, 4, 4),
        lambda x, p: F.pad(x, (2, 1, 1, 2), value=0.5),
        17,
    ),
    "expand": (
        [_n("ReduceMean", ["cam"], "r", axes=[2], keepdims=1), _n("Expand", ["r", "shape"], "y")],
        {"shape": _i(1, 1, 3, 1)},
        (2, 3, 4, 5),
        lambda x, p: x.mean(dim=2, keepdim=True).expand(-1, -1, 3, -1),
        17,
    ),
    "overlapping_max_pool": (
        [_n("MaxPool", ["cam"], "y", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])],
        {},
        (2, 3, 5, 5),
        lambda x, p: F.max_pool2d(x, 3, 1, 1),
        17,
    ),
}


def _model(case: str) -> tuple[onnx.ModelProto, np.ndarray, TorchFn, Params, np.ndarray]:
    nodes, inits, shape, torch_fn, opset = CASES[case]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    params = {name: torch.from_numpy(np.asarray(value)).to(torch.float64) for name, value in inits.items()}
    features = torch_fn(torch.from_numpy(x).to(torch.float64), params).flatten(1).shape[1]
    weights = _w(features, CLASSES, seed=7)
    graph = helper.make_graph(
        [
            _n("Identity", ["x"], "cam"),
            *nodes,
            _n("Flatten", ["y"], "flat"),
            _n("MatMul", ["flat", "wk"], "logits"),
        ],
        case,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in {**inits, "wk": weights}.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), x, torch_fn, params, weights


def run_cam_ready(cam_model: onnx.ModelProto, feeds: dict[str, np.ndarray], targets: list[int]) -> list[np.ndarray]:
    session = ort.InferenceSession(cam_model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = ["probabilities", "gradients"]
    return list(session.run(outputs, {**feeds, "target_class": np.array(targets, dtype=np.int64)}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_rule_matches_autograd(case: str) -> None:
    model, x, torch_fn, params, weights = _model(case)
    cam_model = make_cam_ready(model, cam_layer="cam", output_name="logits", output_is_probability=False)
    probs, grads = run_cam_ready(cam_model, {"x": x}, TARGETS)

    x_ref = torch.from_numpy(x).to(torch.float64).requires_grad_(True)
    logits = torch_fn(x_ref, params).flatten(1) @ torch.from_numpy(weights).to(torch.float64)
    logits[torch.arange(2), torch.tensor(TARGETS)].sum().backward()
    assert x_ref.grad is not None
    expected = x_ref.grad.numpy()

    np.testing.assert_allclose(probs, torch.softmax(logits, dim=1).detach().numpy(), atol=1e-5)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grads, expected, rtol=0, atol=RELATIVE * np.abs(expected).max())


REFUSED: dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray], str]] = {
    "conv_weights_on_the_path": (
        [_n("Conv", ["cam", "cam"], "y")],
        {},
        r"Conv node 'Conv_y' \(output 'y'\): only the data input",
    ),
    "conv_transpose_same": (
        [_n("ConvTranspose", ["cam", "w"], "y", auto_pad="SAME_UPPER", strides=[2, 2])],
        {"w": _w(3, 2, 3, 3)},
        r"ConvTranspose node 'ConvTranspose_y' \(output 'y'\): auto_pad SAME",
    ),
    "pad_reflect": (
        [_n("Pad", ["cam", "pads"], "y", mode="reflect")],
        {"pads": _i(0, 0, 1, 1, 0, 0, 1, 1)},
        r"Pad node 'Pad_y' \(output 'y'\): only mode 'constant'",
    ),
    "pad_computed_pads": (
        [_n("Shape", ["cam"], "sh"), _n("Concat", ["sh", "sh"], "pads", axis=0), _n("Pad", ["cam", "pads"], "y")],
        {},
        r"Pad node 'Pad_y' \(output 'y'\): its pads must be a constant",
    ),
    "batch_norm_training_outputs": (
        [_n("BatchNormalization", ["cam", "s", "s", "s", "s"], ["y", "rm", "rv"], training_mode=1)],
        {"s": np.ones(3, np.float32)},
        r"BatchNormalization node 'BatchNormalization_y' \(output 'y'\): only inference-mode",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_forms_are_refused_naming_op_node_and_output(case: str) -> None:
    nodes, inits, message = REFUSED[case]
    graph = helper.make_graph(
        [_n("Identity", ["x"], "cam"), *nodes, _n("ReduceMean", ["y"], "logits", axes=[2, 3], keepdims=0)],
        case,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedCamOp, match=message):
        make_cam_ready(model, cam_layer="cam", output_name="logits", output_is_probability=False)


@pytest.mark.parametrize(("low", "high"), [(-0.3, 0.4), (None, 0.2), (-0.1, None)])
def test_clip_bounds_given_as_attributes(low: float | None, high: float | None) -> None:
    """Clip before opset 11 held its bounds as attributes; the rule reads them there too."""
    bounds = {name: value for name, value in (("min", low), ("max", high)) if value is not None}
    node = helper.make_node("Clip", ["x"], ["y"], name="clip", **bounds)
    ctx = BackwardContext(shapes={}, differentiable={"x"})
    (grad,) = ACTIVATION_OPS["Clip"](ctx, node, "d")
    assert grad is not None
    graph = helper.make_graph(
        [*ctx.nodes, helper.make_node("Identity", [grad], ["dx"])],
        "clip_backward",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 5]) for name in ("x", "d")],
        [helper.make_tensor_value_info("dx", TensorProto.FLOAT, [2, 5])],
        ctx.initializers,
    )
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    x, d = (np.random.default_rng(seed).standard_normal((2, 5)).astype(np.float32) for seed in (1, 2))
    (ours,) = session.run(["dx"], {"x": x, "d": d})
    reference = torch.from_numpy(x).double().requires_grad_(True)
    (torch.clamp(reference, min=low, max=high) * torch.from_numpy(d).double()).sum().backward()
    assert reference.grad is not None
    np.testing.assert_array_equal(ours, reference.grad.numpy().astype(np.float32))
