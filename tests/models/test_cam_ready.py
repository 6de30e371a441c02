"""CAM-ready graphs give exact gradients: checked against torch autograd, never against ourselves."""

import copy
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from models.cam import grad_cam, normalise
from models.cam_ready import cam_ready_path, default_cam_layer, make_cam_ready
from models.errors import ModelContractError, ModelFileMismatch, UnsupportedCamOp
from models.manifest import ModelManifest, file_sha256, resolve_model_path

TORCH_DTYPES = {TensorProto.FLOAT: torch.float32, TensorProto.INT32: torch.int32, TensorProto.INT64: torch.int64}
Op = Callable[[onnx.NodeProto, list[torch.Tensor]], torch.Tensor]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def _pads(node: onnx.NodeProto) -> list[int]:
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
    assert pads[:2] == pads[2:], "the reference handles symmetric pads only"
    return pads[:2]


def _slice(node: onnx.NodeProto, x: list[torch.Tensor]) -> torch.Tensor:
    starts, ends = x[1].tolist(), x[2].tolist()
    axes = x[3].tolist() if len(x) > 3 else list(range(len(starts)))
    index = [slice(None)] * x[0].dim()
    for axis, start, end in zip(axes, starts, ends, strict=True):
        index[axis] = slice(start, min(end, x[0].shape[axis]))
    return x[0][tuple(index)]


def _reshape(x: list[torch.Tensor]) -> torch.Tensor:
    shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(x[1].tolist())]
    return x[0].reshape(shape)


def _gemm(node: onnx.NodeProto, x: list[torch.Tensor]) -> torch.Tensor:
    a = x[0].T if _attr(node, "transA", 0) else x[0]
    b = x[1].T if _attr(node, "transB", 0) else x[1]
    out = float(_attr(node, "alpha", 1.0)) * (a @ b)  # type: ignore[arg-type]
    return out + float(_attr(node, "beta", 1.0)) * x[2] if len(x) > 2 else out  # type: ignore[arg-type]


TORCH_OPS: dict[str, Op] = {
    "Transpose": lambda n, x: x[0].permute(*_attr(n, "perm")),  # type: ignore[misc]
    "Conv": lambda n, x: F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, padding=_pads(n)),
    "Relu": lambda n, x: torch.relu(x[0]),
    "MaxPool": lambda n, x: F.max_pool2d(x[0], _attr(n, "kernel_shape"), _attr(n, "strides", 1), _pads(n)),
    "AveragePool": lambda n, x: F.avg_pool2d(
        x[0], _attr(n, "kernel_shape"), _attr(n, "strides", 1), _pads(n), count_include_pad=True
    ),
    "GlobalAveragePool": lambda n, x: x[0].mean(dim=(2, 3), keepdim=True),
    "Shape": lambda n, x: torch.tensor(x[0].shape, dtype=torch.int64),
    "Size": lambda n, x: torch.tensor(x[0].numel(), dtype=torch.int64),
    "Gather": lambda n, x: x[0][x[1]],
    "Cast": lambda n, x: x[0].to(TORCH_DTYPES[_attr(n, "to")]),  # type: ignore[index]
    "Slice": _slice,
    "Concat": lambda n, x: torch.cat(x, dim=_attr(n, "axis")),  # type: ignore[arg-type]
    "Reshape": lambda n, x: _reshape(x),
    "Flatten": lambda n, x: x[0].flatten(_attr(n, "axis", 1)),  # type: ignore[arg-type]
    "Squeeze": lambda n, x: x[0].squeeze(tuple(x[1].tolist())),
    "Unsqueeze": lambda n, x: x[0].unsqueeze(int(x[1].item())),
    "MatMul": lambda n, x: x[0] @ x[1],
    "Gemm": _gemm,
    "Add": lambda n, x: x[0] + x[1],
    "Sub": lambda n, x: x[0] - x[1],
    "Mul": lambda n, x: x[0] * x[1],
    "Div": lambda n, x: x[0] / x[1],
    "Identity": lambda n, x: x[0],
    "Dropout": lambda n, x: x[0],
    "Softmax": lambda n, x: torch.softmax(x[0], dim=_attr(n, "axis", -1)),  # type: ignore[arg-type]
}


def torch_reference(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], cam_layer: str, targets: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate the ONNX graph with torch ops; autograd from the pre-softmax logit to cam_layer.

    Returns (probabilities, activations, gradients); ``targets`` None = argmax per sample.
    """
    values: dict[str, torch.Tensor] = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    values.update({name: torch.from_numpy(array) for name, array in feeds.items()})
    logits_name = output_name = model.graph.output[0].name
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.output[0] == output_name:
            logits_name = node.input[0]
        if node.op_type == "Constant":
            values[node.output[0]] = torch.from_numpy(numpy_helper.to_array(node.attribute[0].t).copy())
            continue
        result = TORCH_OPS[node.op_type](node, [values[name] for name in node.input if name])
        if node.output[0] == cam_layer:
            result = result.detach().requires_grad_(True)
        values[node.output[0]] = result
    logits = values[logits_name]
    chosen = logits.argmax(dim=1).tolist() if targets is None else targets
    logits[torch.arange(len(chosen)), torch.tensor(chosen)].sum().backward()
    activations = values[cam_layer]
    probabilities = torch.softmax(logits, dim=1) if logits_name != output_name else values[output_name]
    grad = activations.grad
    assert grad is not None
    return probabilities.detach().numpy(), activations.detach().numpy(), grad.numpy()


def run_cam_ready(model: onnx.ModelProto, feeds: dict[str, np.ndarray], targets: list[int]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(
        session.run(["probabilities", "activations", "gradients"], {**feeds, "target_class": np.array(targets)})
    )


class SmallNet(torch.nn.Module):
    """conv -> relu -> conv -> relu [CAM layer] -> maxpool -> flatten -> linear -> relu -> linear -> softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 4 * 4, 16)
        self.fc2 = torch.nn.Linear(16, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))

    def head_logits(self, acts: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(F.max_pool2d(acts, 2).flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head_logits(self.features(x)), dim=1)


@pytest.fixture(scope="module")
def small_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmallNet, onnx.ModelProto, str]:
    torch.manual_seed(0)
    net = SmallNet().eval()
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    example = torch.rand(2, 3, 8, 8)
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    return net, model, relus[1].output[0]


def torch_grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> np.ndarray:
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1))
    low = cam.amin(dim=(1, 2), keepdim=True)
    high = cam.amax(dim=(1, 2), keepdim=True)
    return ((cam - low) / (high - low)).numpy()


def _classes_with_visible_cams(net: SmallNet, x: torch.Tensor) -> list[int]:
    """Per sample, a different class whose Grad-CAM is not all zero (random weights often give empty maps)."""
    acts = net.features(x).detach()
    visible: list[list[int]] = [[], []]
    for k in range(5):
        probe = acts.clone().requires_grad_(True)
        net.head_logits(probe)[:, k].sum().backward()
        assert probe.grad is not None
        weights = probe.grad.mean(dim=(2, 3), keepdim=True)
        for sample in range(2):
            if torch.relu((weights * acts).sum(dim=1))[sample].max() > 0:
                visible[sample].append(k)
    first = visible[0][0]
    return [first, next(k for k in visible[1] if k != first)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_small_torch_model_gradients_match_autograd(small_net: tuple[SmallNet, onnx.ModelProto, str]) -> None:
    net, model, cam_layer = small_net
    cam_model = make_cam_ready(model, cam_layer=cam_layer, output_name="probs")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = _classes_with_visible_cams(net, x)
    assert targets[0] != targets[1]
    acts = net.features(x).detach().requires_grad_(True)
    logits = net.head_logits(acts)
    logits[torch.arange(2), torch.tensor(targets)].sum().backward()
    assert acts.grad is not None

    probs, ort_acts, ort_grads = run_cam_ready(cam_model, {"image": x.numpy()}, targets)

    np.testing.assert_allclose(probs, torch.softmax(logits, 1).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ort_acts, acts.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ort_grads, acts.grad.numpy(), atol=1e-4)
    expected_cams = torch_grad_cam(acts.detach(), acts.grad)
    assert not np.isnan(expected_cams).any(), "pick inputs whose reference CAM is not empty"
    for sample in range(2):
        ours = normalise(grad_cam(ort_acts[sample], ort_grads[sample]))
        np.testing.assert_allclose(ours, expected_cams[sample], atol=1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_minus_one_targets_the_predicted_class(small_net: tuple[SmallNet, onnx.ModelProto, str]) -> None:
    _, model, cam_layer = small_net
    cam_model = make_cam_ready(model, cam_layer=cam_layer, output_name="probs")
    feeds = {"image": np.random.default_rng(2).random((2, 3, 8, 8), dtype=np.float32)}
    probs, _, by_argmax = run_cam_ready(cam_model, feeds, [-1, -1])
    predicted = [int(k) for k in probs.argmax(axis=1)]
    _, _, explicit = run_cam_ready(cam_model, feeds, predicted)
    np.testing.assert_array_equal(by_argmax, explicit)
    _, _, other = run_cam_ready(cam_model, feeds, [(k + 1) % 5 for k in predicted])
    assert not np.allclose(other, explicit)


def test_default_model_matches_torch_reference(default_manifest: ModelManifest) -> None:
    model = onnx.load(str(resolve_model_path(default_manifest)))
    cam_model = make_cam_ready(model, cam_layer=default_manifest.cam_layer, output_name=default_manifest.output_name)
    rng = np.random.default_rng(3)
    image = rng.random((2, 240, 240, 3), dtype=np.float32)
    image[:, 80:140, 100:170] = 1.0  # a bright "lesion" so the activations are not uniform
    feeds = {"input": image}

    probs, acts, grads = run_cam_ready(cam_model, feeds, [-1, 0])
    ref_probs, ref_acts, ref_grads = torch_reference(
        model, feeds, default_manifest.cam_layer, [int(probs[0].argmax()), 0]
    )

    np.testing.assert_allclose(probs, ref_probs, atol=1e-4)
    np.testing.assert_allclose(acts, ref_acts, atol=1e-3 * np.abs(ref_acts).max())
    np.testing.assert_allclose(grads, ref_grads, atol=1e-4 * np.abs(ref_grads).max())
    for sample in range(2):
        ours = normalise(grad_cam(acts[sample], grads[sample]))
        ref = normalise(grad_cam(ref_acts[sample], ref_grads[sample]))
        assert np.abs(ours - ref).max() < 1e-3


def head_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], *, opset: int = 17) -> onnx.ModelProto:
    """x [N,3,6,6] -> Relu -> "cam" -> ``nodes`` -> "logits" [N,K] -> Softmax -> "probs"."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["cam"], name="cam_relu"),
            *nodes,
            helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        ],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", None])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _n(op: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


HEADS: dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray]]] = {
    "overlapping_maxpool_broadcast_mul_div_matmul": (
        [
            _n("MaxPool", ["cam"], "p", kernel_shape=[3, 3], strides=[1, 1]),
            _n("Mul", ["p", "scale"], "m"),
            _n("Div", ["m", "two"], "d"),
            _n("Reshape", ["d", "flat"], "f"),
            _n("MatMul", ["f", "w"], "mm"),
            _n("Add", ["mm", "b"], "logits"),
        ],
        {
            "scale": _weights(3, 1, 1),
            "two": np.float32(2.0),
            "flat": np.array([0, -1]),
            "w": _weights(48, 4, seed=1),
            "b": _weights(4, seed=2),
        },
    ),
    "padded_averagepool_gemm_alpha": (
        [
            _n(
                "AveragePool", ["cam"], "a", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1
            ),
            _n("Flatten", ["a"], "f"),
            _n("Gemm", ["f", "w", "c"], "g", alpha=0.5),
            _n("Sub", ["g", "c"], "logits"),
        ],
        {"w": _weights(27, 4, seed=3), "c": _weights(4, seed=4)},
    ),
    "global_pool_broadcast_add_of_two_branches": (
        [
            _n("GlobalAveragePool", ["cam"], "gap"),
            _n("Add", ["cam", "gap"], "s"),
            _n("Mul", ["s", "cam"], "sq"),
            _n("Transpose", ["sq"], "t", perm=[0, 2, 3, 1]),
            _n("Identity", ["t"], "i"),
            _n("Dropout", ["i"], "dr"),
            _n("Unsqueeze", ["dr", "ax1"], "u"),
            _n("Squeeze", ["u", "ax1"], "sqz"),
            _n("Flatten", ["sqz"], "f"),
            _n("Gemm", ["f", "w"], "logits", transB=1),
        ],
        {"ax1": np.array([1]), "w": _weights(4, 108, seed=5)},
    ),
    "batched_matmul_and_sub_from_constant": (
        [
            _n("Reshape", ["cam", "nc_hw"], "r"),
            _n("MatMul", ["r", "w"], "mm"),
            _n("Sub", ["k", "mm"], "neg"),
            _n("Flatten", ["neg"], "f"),
            _n("Gemm", ["f", "w2"], "logits"),
        ],
        {
            "nc_hw": np.array([0, 3, 36]),
            "w": _weights(36, 2, seed=6),
            "k": _weights(1, 2, seed=7),
            "w2": _weights(6, 4, seed=8),
        },
    ),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_each_backward_op_matches_autograd(head: str) -> None:
    nodes, inits = HEADS[head]
    model = head_model(nodes, inits)
    cam_model = make_cam_ready(model, cam_layer="cam", output_name="probs")
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)
    probs, _, grads = run_cam_ready(cam_model, {"x": x}, [1, -1])
    ref_probs, _, ref_grads = torch_reference(model, {"x": x}, "cam", [1, int(probs[1].argmax())])
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(grads, ref_grads, atol=1e-4 * max(1.0, np.abs(ref_grads).max()))
    assert np.abs(ref_grads).max() > 0


def test_logit_output_is_soft_maxed_for_probabilities() -> None:
    nodes, inits = HEADS["padded_averagepool_gemm_alpha"]
    model = head_model(nodes, inits)
    del model.graph.node[-1]
    model.graph.output[0].name = "logits"
    x = np.random.default_rng(10).standard_normal((2, 3, 6, 6)).astype(np.float32)
    cam_model = make_cam_ready(model, cam_layer="cam", output_name="logits", output_is_probability=False)
    probs, _, grads = run_cam_ready(cam_model, {"x": x}, [0, 2])
    ref_probs, _, ref_grads = torch_reference(head_model(nodes, inits), {"x": x}, "cam", [0, 2])
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(grads, ref_grads, atol=1e-4)
    as_given = make_cam_ready(model, cam_layer="cam", output_name="logits", output_is_probability=True)
    raw, _, _ = run_cam_ready(as_given, {"x": x}, [0, 2])
    assert not np.allclose(raw.sum(axis=1), 1.0)


def test_unsupported_op_in_head_names_op_node_and_output() -> None:
    nodes = [_n("Erf", ["cam"], "s"), _n("Flatten", ["s"], "f"), _n("Gemm", ["f", "w"], "logits")]
    model = head_model(nodes, {"w": _weights(108, 4)})
    with pytest.raises(UnsupportedCamOp, match=r"op Erf in node 'Erf_s' \(output 's'\)"):
        make_cam_ready(model, cam_layer="cam", output_name="probs")


def test_softmax_inside_the_head_matches_autograd() -> None:
    nodes = [_n("Softmax", ["cam"], "s", axis=1), _n("Flatten", ["s"], "f"), _n("Gemm", ["f", "w"], "logits")]
    model = head_model(nodes, {"w": _weights(108, 4)})
    cam_model = make_cam_ready(model, cam_layer="cam", output_name="probs")
    x = np.random.default_rng(11).standard_normal((2, 3, 6, 6)).astype(np.float32)
    _, _, grads = run_cam_ready(cam_model, {"x": x}, [1, 3])
    _, _, ref_grads = torch_reference(model, {"x": x}, "cam", [1, 3])
    np.testing.assert_allclose(grads, ref_grads, atol=1e-5 * np.abs(ref_grads).max())
    assert np.abs(ref_grads).max() > 0


def test_unknown_layer_and_old_opset_are_refused() -> None:
    nodes, inits = HEADS["padded_averagepool_gemm_alpha"]
    with pytest.raises(ModelContractError, match="cam_layer 'nope'"):
        make_cam_ready(head_model(nodes, inits), cam_layer="nope", output_name="probs")
    with pytest.raises(ModelContractError, match="opset 11"):
        make_cam_ready(head_model(nodes, inits, opset=11), cam_layer="cam", output_name="probs")


def test_cache_builds_once_and_refuses_a_wrong_sha(default_manifest: ModelManifest, tmp_path: Path) -> None:
    onnx_path = resolve_model_path(default_manifest)
    spec = {"cam_layer": default_manifest.cam_layer, "output_name": default_manifest.output_name}
    first = cam_ready_path(onnx_path, default_manifest.sha256, tmp_path, **spec)
    built_at = os.stat(first).st_mtime_ns
    second = cam_ready_path(onnx_path, default_manifest.sha256, tmp_path, **spec)
    assert second == first and os.stat(second).st_mtime_ns == built_at
    assert first.name.startswith(f"{default_manifest.sha256}-camready-v1")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp file left behind
    with pytest.raises(ModelFileMismatch, match=r"Tumor_classification_vgg16\.onnx"):
        cam_ready_path(onnx_path, "0" * 64, tmp_path, **spec)


def test_file_sha256_matches_manifest(default_manifest: ModelManifest) -> None:
    assert file_sha256(resolve_model_path(default_manifest)) == default_manifest.sha256


VGG16_CAM_READY_SHA256 = "7714445e57c0eae5ba0489e43830e0d24e401c70b4c7d101676f697374759a95"  # built by the v1 builder


def test_default_model_cam_ready_graph_is_unchanged(default_manifest: ModelManifest) -> None:
    """The generalised builder emits byte for byte the graph the VGG16-only builder did (so the same
    gradients, bit for bit, at the same speed); the digest was taken from the builder before the change."""
    model = onnx.load(str(resolve_model_path(default_manifest)))
    cam_model = make_cam_ready(model, cam_layer="functional_1/block5_conv3_1/Relu:0", output_name="dense_3")
    digest = hashlib.sha256(cam_model.SerializeToString(deterministic=True)).hexdigest()
    assert digest == VGG16_CAM_READY_SHA256


class GuidedNet(torch.nn.Module):
    """conv -> ReLU -> maxpool -> conv -> ReLU [default CAM layer] -> flatten -> linear -> ReLU -> linear (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(6, 8, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class WithSoftmax(torch.nn.Module):
    def __init__(self, logits: torch.nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


@pytest.fixture(scope="module")
def guided_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[GuidedNet, onnx.ModelProto]:
    torch.manual_seed(3)
    net = GuidedNet().eval()
    path = tmp_path_factory.mktemp("guided") / "guided.onnx"
    torch.onnx.export(
        WithSoftmax(net),
        (torch.rand(2, 3, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return net, onnx.load(str(path))


def _run(cam_model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(cam_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(outputs, feeds))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_default_cam_layer_is_the_last_rank4_tensor_on_the_path(
    guided_net: tuple[GuidedNet, onnx.ModelProto], small_net: tuple[SmallNet, onnx.ModelProto, str]
) -> None:
    _, model = guided_net
    relus = [node.output[0] for node in model.graph.node if node.op_type == "Relu"]
    assert default_cam_layer(model, "probs") == relus[1]  # not relus[2]: that one is rank 2, in the classifier
    _, small, _ = small_net
    pools = [node.output[0] for node in small.graph.node if node.op_type == "MaxPool"]
    assert default_cam_layer(small, "probs") == pools[0]  # the head's max-pool output is the last rank-4 tensor
    explicit = make_cam_ready(model, cam_layer=relus[1], output_name="probs")
    default = make_cam_ready(model, cam_layer=None, output_name="probs")
    feeds = {"image": np.random.default_rng(4).random((2, 3, 8, 8), dtype=np.float32), "target_class": np.array([1, 2])}
    outputs = ["probabilities", "activations", "gradients"]
    for ours, reference in zip(_run(default, feeds, outputs), _run(explicit, feeds, outputs), strict=True):
        np.testing.assert_array_equal(ours, reference)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_plain_input_gradients_match_autograd(guided_net: tuple[GuidedNet, onnx.ModelProto]) -> None:
    net, model = guided_net
    cam_model = make_cam_ready(model, output_name="probs", input_gradients="plain")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    feeds = {"image": x.numpy(), "target_class": np.array([3, 1])}
    grads, input_grads = _run(cam_model, feeds, ["gradients", "input_gradients"])
    reference = x.clone().double().requires_grad_(True)
    net.double()(reference)[torch.arange(2), torch.tensor([3, 1])].sum().backward()
    net.float()
    assert reference.grad is not None
    expected = reference.grad.numpy()
    np.testing.assert_allclose(input_grads, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    without = make_cam_ready(model, output_name="probs")
    np.testing.assert_array_equal(grads, _run(without, feeds, ["gradients"])[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_guided_input_gradients_match_pytorch_grad_cam(guided_net: tuple[GuidedNet, onnx.ModelProto]) -> None:
    from reference.gradcam import pytorch_grad_cam

    net, model = guided_net
    cam_model = make_cam_ready(model, output_name="probs", input_gradients="guided")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    targets = [4, 0]
    feeds = {"image": x.numpy(), "target_class": np.array(targets)}
    guided, plain_cam = _run(cam_model, feeds, ["input_gradients", "gradients"])
    for sample, target in enumerate(targets):
        reference = pytorch_grad_cam.GuidedBackpropReLUModel(copy.deepcopy(net), device="cpu")
        expected = reference(x[sample : sample + 1].clone(), target_category=target)  # HWC of sample 0
        np.testing.assert_allclose(
            guided[sample].transpose(1, 2, 0), expected, rtol=0, atol=1e-5 * np.abs(expected).max()
        )
    plain = _run(make_cam_ready(model, output_name="probs", input_gradients="plain"), feeds, ["input_gradients"])[0]
    assert not np.allclose(guided, plain)
    np.testing.assert_array_equal(plain_cam, _run(make_cam_ready(model, output_name="probs"), feeds, ["gradients"])[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_multi_target_equals_separate_runs(small_net: tuple[SmallNet, onnx.ModelProto, str]) -> None:
    _, model, cam_layer = small_net
    single = make_cam_ready(model, cam_layer=cam_layer, output_name="probs", tumour_classes=[0, 2, 3])
    multi = make_cam_ready(model, cam_layer=cam_layer, output_name="probs", tumour_classes=[0, 2, 3], multi_target=True)
    image = np.random.default_rng(7).random((2, 3, 8, 8), dtype=np.float32)
    targets = np.array([[0, -1, 4, -2], [3, 1, -2, -1]])
    probs, acts, grads = _run(
        multi, {"image": image, "target_class": targets}, ["probabilities", "activations", "gradients"]
    )
    assert grads.shape == (2, 4, *acts.shape[1:])
    for column in range(targets.shape[1]):
        feeds = {"image": image, "target_class": targets[:, column]}
        ref_probs, ref_acts, ref_grads = _run(single, feeds, ["probabilities", "activations", "gradients"])
        np.testing.assert_array_equal(probs, ref_probs)
        np.testing.assert_array_equal(acts, ref_acts)
        np.testing.assert_allclose(grads[:, column], ref_grads, rtol=0, atol=1e-6 * np.abs(ref_grads).max())
    assert not np.allclose(grads[:, 0], grads[:, 2])


def test_multi_target_with_input_gradients_is_refused() -> None:
    nodes, inits = HEADS["padded_averagepool_gemm_alpha"]
    with pytest.raises(ModelContractError, match="multi_target and input_gradients cannot be combined"):
        make_cam_ready(
            head_model(nodes, inits), cam_layer="cam", output_name="probs", input_gradients="plain", multi_target=True
        )


def test_cache_key_holds_the_modes(default_manifest: ModelManifest, tmp_path: Path) -> None:
    onnx_path = resolve_model_path(default_manifest)
    spec = {"cam_layer": default_manifest.cam_layer, "output_name": default_manifest.output_name}
    plain = cam_ready_path(onnx_path, default_manifest.sha256, tmp_path, **spec)
    multi = cam_ready_path(onnx_path, default_manifest.sha256, tmp_path, **spec, multi_target=True)
    assert plain != multi
    target = onnx.load(str(multi)).graph.input[-1]
    assert [d.dim_param for d in target.type.tensor_type.shape.dim] == ["N", "T"]
