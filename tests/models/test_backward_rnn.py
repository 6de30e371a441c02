"""CNN-LSTM/GRU heads exported by torch.onnx: the lowered recurrent nodes give autograd's gradients."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models.cam_ready import make_cam_ready
from models.errors import UnsupportedCamOp


class ConvRecurrent(torch.nn.Module):
    """conv -> relu [CAM layer] -> the 4x3 pixels as a 12-step sequence -> LSTM/GRU -> last step -> linear."""

    def __init__(self, kind: str, bidirectional: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        rnn = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        self.rnn = rnn(4, 5, bidirectional=bidirectional)
        self.fc = torch.nn.Linear(5 * (2 if bidirectional else 1), 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def head(self, acts: torch.Tensor) -> torch.Tensor:
        sequence = acts.flatten(2).permute(2, 0, 1)  # [steps, N, channels]
        out, _ = self.rnn(sequence)
        return self.fc(out[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(x)), dim=1)


def _export(net: ConvRecurrent, path: str) -> tuple[onnx.ModelProto, str]:
    torch.onnx.export(
        net,
        (torch.rand(2, 3, 4, 3),),
        path,
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(path)
    return model, next(n for n in model.graph.node if n.op_type == "Relu").output[0]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("kind", "bidirectional"), [("lstm", False), ("lstm", True), ("gru", False), ("gru", True)])
def test_recurrent_head_matches_autograd(kind: str, bidirectional: bool, tmp_path: object) -> None:
    torch.manual_seed(1)
    net = ConvRecurrent(kind, bidirectional).eval()
    model, cam_layer = _export(net, f"{tmp_path}/net.onnx")
    assert any(node.op_type == kind.upper() for node in model.graph.node)
    cam_model = make_cam_ready(model, cam_layer=cam_layer, output_name="probs")
    assert not any(node.op_type in ("LSTM", "GRU") for node in cam_model.graph.node)
    x = torch.rand(2, 3, 4, 3, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(cam_model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, grads = session.run(["probabilities", "gradients"], {"image": x.numpy(), "target_class": np.array([2, 0])})

    acts = net.features(x).detach().double().requires_grad_(True)
    logits = net.double().head(acts)
    logits[torch.arange(2), torch.tensor([2, 0])].sum().backward()
    assert acts.grad is not None

    np.testing.assert_allclose(probs, torch.softmax(logits, 1).detach().numpy(), atol=1e-5)
    expected = acts.grad.numpy()
    np.testing.assert_allclose(grads, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _lstm_model(**attrs: object) -> onnx.ModelProto:
    """x [N,2,1,3] -> Identity "cam" -> Reshape [N, 2, 3] (2 steps, batch N = 1 here) -> LSTM -> Y_h -> logits."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Identity", ["x"], ["cam"], name="cam"),
        helper.make_node("Reshape", ["cam", "seq"], ["s"], name="reshape"),
        helper.make_node("LSTM", ["s", "W", "R"], ["", "h"], name="lstm", hidden_size=2, **attrs),
        helper.make_node("Reshape", ["h", "flat"], ["logits"], name="flatten"),
    ]
    inits = {
        "seq": np.array([2, 1, 3]),
        "flat": np.array([1, 2]),
        "W": rng.standard_normal((1, 8, 3)).astype(np.float32),
        "R": rng.standard_normal((1, 8, 2)).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lowered_lstm_equals_onnx_runtime_lstm() -> None:
    model = _lstm_model()
    x = np.random.default_rng(1).standard_normal((1, 2, 1, 3)).astype(np.float32)
    (reference,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"x": x}
    )
    cam_model = make_cam_ready(model, cam_layer="cam", output_name="logits", output_is_probability=False)
    session = ort.InferenceSession(cam_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"x": x, "target_class": np.array([0])})
    expected = np.exp(reference) / np.exp(reference).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("attrs", "why"),
    [({"clip": 1.0}, "clip"), ({"activations": ["Relu", "Tanh", "Tanh"]}, "default activations")],
)
def test_unsupported_lstm_forms_are_refused(attrs: dict[str, object], why: str) -> None:
    with pytest.raises(UnsupportedCamOp, match=rf"LSTM node 'lstm' \(output ''\) cannot be lowered: .*{why}"):
        make_cam_ready(_lstm_model(**attrs), cam_layer="cam", output_name="logits", output_is_probability=False)


def _recurrent_model(op: str, direction: str, with_bias_and_state: bool, **attrs: object) -> onnx.ModelProto:
    """x [3 steps, 2, 3] -> Identity "cam" -> ``op`` -> Y_h [dirs, 2, 2] -> [2, dirs * 2] "logits"."""
    rng = np.random.default_rng(4)
    dirs, gates = (2 if direction == "bidirectional" else 1), (4 if op == "LSTM" else 3)
    inits = {
        "W": rng.standard_normal((dirs, gates * 2, 3)),
        "R": rng.standard_normal((dirs, gates * 2, 2)),
        "B": rng.standard_normal((dirs, 2 * gates * 2)),
        "h0": rng.standard_normal((dirs, 2, 2)),
        "c0": rng.standard_normal((dirs, 2, 2)),
    }
    inputs = ["s", "W", "R", *(["B", "", "h0"] if with_bias_and_state else [])]
    if op == "LSTM" and with_bias_and_state:
        inputs.append("c0")
    nodes = [
        helper.make_node("Identity", ["x"], ["cam"], name="cam"),
        helper.make_node("Relu", ["cam"], ["s"], name="relu"),
        helper.make_node(op, inputs, ["", "h"], name="rnn", hidden_size=2, direction=direction, **attrs),
        helper.make_node("Transpose", ["h"], ["ht"], name="transpose", perm=[1, 0, 2]),
        helper.make_node("Reshape", ["ht", "flat"], ["logits"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, dirs * 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
        + [numpy_helper.from_array(np.array([2, -1]), "flat")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("op", "direction", "with_bias_and_state", "attrs"),
    [
        ("LSTM", "reverse", True, {}),
        ("LSTM", "bidirectional", True, {}),
        ("GRU", "forward", True, {"linear_before_reset": 0}),
        ("GRU", "bidirectional", False, {"linear_before_reset": 0}),
        ("GRU", "reverse", True, {"linear_before_reset": 1}),
    ],
)
def test_lowering_reproduces_onnx_runtime_recurrent_ops(
    op: str, direction: str, with_bias_and_state: bool, attrs: dict[str, object]
) -> None:
    """ONNX Runtime's own LSTM/GRU kernel is the reference for the unrolled forms and their options."""
    model = _recurrent_model(op, direction, with_bias_and_state, **attrs)
    x = np.random.default_rng(5).standard_normal((3, 2, 3)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"x": x})
    cam_model = make_cam_ready(model, cam_layer="cam", output_name="logits", output_is_probability=False)
    cam_session = ort.InferenceSession(cam_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = cam_session.run(["probabilities"], {"x": x, "target_class": np.array([0, 1])})
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
