"""Every CAM method against pytorch-grad-cam on the same weights.

A small PyTorch conv net (random weights, eval mode) is exported to ONNX with its CAM
layer kept as a named tensor; Sightline explains the ONNX file through ``Classifier``
while pytorch-grad-cam explains the torch module. Like is compared with like at the input
size: pytorch-grad-cam returns ``scale_cam_image`` of the ReLU'd map (min-max, OpenCV
bilinear resize to the input size, min-max again); Sightline's raw map goes through
``models.guided.upsample``, which is that same pipeline, and Guided Grad-CAM, already at
the input size, is min-max normalised. Both must agree within 1e-3.
"""

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from reference.gradcam import pytorch_grad_cam
from torch import nn

from models.cam import normalise
from models.cam_forward import ABLATION_OFFSET
from models.guided import upsample
from models.inference import Classifier
from models.manifest import ModelManifest
from models.preprocess import preprocess

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
SIZE = 32
TOLERANCE = 1e-3


class SmallNet(nn.Module):
    """conv-relu-maxpool-conv-relu (the CAM layer, 16x16) then maxpool-flatten-fc-relu-fc: logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))


class Exported(nn.Module):
    """Softmax probabilities plus the CAM-layer tensor (after relu2, or the conv2 output before it)."""

    def __init__(self, net: SmallNet, before_relu: bool) -> None:
        super().__init__()
        self.net, self.before_relu = net, before_relu

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        conv = net.conv2(net.pool1(net.relu1(net.conv1(x))))
        relu = net.relu2(conv)
        return torch.softmax(net.head(relu), dim=-1), conv if self.before_relu else relu


def _export(net: SmallNet, folder: Path, before_relu: bool) -> ModelManifest:
    """ONNX (opset 17) with the features output dropped from graph.output, and its manifest."""
    path = folder / f"small-{'conv' if before_relu else 'relu'}.onnx"
    axes = {name: {0: "N"} for name in ("input", "prob", "features")}
    example = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        Exported(net, before_relu), (example,), str(path), input_names=["input"],
        output_names=["prob", "features"], dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    model = onnx.load(str(path))
    kept = [output for output in model.graph.output if output.name == "prob"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(path))
    return ModelManifest(
        name="small-net", version="1", labels=LABELS, tumour_labels=["glioma", "meningioma", "pituitary"],
        no_tumour_label="notumor", input_name="input", output_name="prob", input_layout="NCHW",
        input_size=(SIZE, SIZE), channel_order="RGB", scale=1 / 255, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
        output_is_probability=True, cam_layer="features", cam_method="gradcam", onnx_path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def net() -> SmallNet:
    torch.manual_seed(7)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Smooth blobs, so the maps have structure rather than noise."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    channels = [np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 40.0) for r, c in ((10, 20), (22, 8), (16, 16))]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def _classifier(net: SmallNet, folder: Path, before_relu: bool = False, batch_size: int = 32) -> Classifier:
    manifest = _export(net, folder, before_relu)
    return Classifier(manifest, cache_dir=folder / "cache", intra_op_threads=1, batch_size=batch_size)


@pytest.fixture(scope="module")
def relu_classifier(net: SmallNet, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return _classifier(net, tmp_path_factory.mktemp("small-relu"), batch_size=5)


def _reference(
    cam_class: Any, net: SmallNet, layer: nn.Module, tensor: torch.Tensor, target: int, **kw: Any
) -> np.ndarray:
    cam = cam_class(model=net, target_layers=[layer], **kw)
    targets = [pytorch_grad_cam.utils.model_targets.ClassifierOutputTarget(target)]
    return np.asarray(cam(input_tensor=tensor, targets=targets)[0], dtype=np.float32)


def _guided_backprop(net: SmallNet, tensor: torch.Tensor, target_category: int) -> np.ndarray:
    """pytorch-grad-cam's guided backprop on a copy: it puts one shared ReLU back in every ReLU's
    place afterwards, so a hook on ``net.relu2`` would then fire for every ReLU of the net."""
    model = pytorch_grad_cam.GuidedBackpropReLUModel(copy.deepcopy(net))
    return np.asarray(model(tensor.clone(), target_category=target_category), dtype=np.float32)


def _ours(classifier: Classifier, image: np.ndarray, method: str, target: int) -> np.ndarray:
    return upsample(classifier.explain(image, method, target).cam, (SIZE, SIZE))


def _input(classifier: Classifier, image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(preprocess(image, classifier.manifest))


REFERENCES: dict[str, Callable[[], Any]] = {
    "gradcam": lambda: pytorch_grad_cam.GradCAM,
    "hirescam": lambda: pytorch_grad_cam.HiResCAM,
    "gradcampp": lambda: pytorch_grad_cam.GradCAMPlusPlus,
    "xgradcam": lambda: pytorch_grad_cam.XGradCAM,
    "layercam": lambda: pytorch_grad_cam.LayerCAM,
    "scorecam": lambda: pytorch_grad_cam.ScoreCAM,
    "ablationcam": lambda: pytorch_grad_cam.AblationCAM,
}


@pytest.mark.parametrize("target", [0, 3])
@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_method_matches_pytorch_grad_cam(
    relu_classifier: Classifier, net: SmallNet, image: np.ndarray, method: str, target: int
) -> None:
    expected = _reference(REFERENCES[method](), net, net.relu2, _input(relu_classifier, image), target)
    ours = _ours(relu_classifier, image, method, target)
    assert expected.max() == pytest.approx(1.0, abs=1e-6)  # a real map, not an all-zero one
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)


def test_eigen_cam_matches_pytorch_grad_cam_up_to_the_documented_sign(
    relu_classifier: Classifier, net: SmallNet, image: np.ndarray
) -> None:
    """Equal to pytorch-grad-cam when LAPACK's component already sums to >= 0, else to the
    ReLU of pytorch-grad-cam's negated projection (models.cam.eigen_cam)."""
    tensor = _input(relu_classifier, image)
    acts = net.relu2(net.conv2(net.pool1(net.relu1(net.conv1(tensor))))).detach().numpy()
    positions = acts[0].reshape(acts.shape[1], -1).T
    centred = positions - positions.mean(axis=0)
    lapack_sign = 1.0 if np.linalg.svd(centred)[2][0].sum() >= 0.0 else -1.0
    projection = pytorch_grad_cam.utils.svd_on_activations.get_2d_projection(acts)
    expected = upsample(np.maximum(lapack_sign * projection[0], 0.0), (SIZE, SIZE))
    if lapack_sign > 0:
        expected_pgc = _reference(pytorch_grad_cam.EigenCAM, net, net.relu2, tensor, 0)
        np.testing.assert_allclose(expected, expected_pgc, atol=TOLERANCE)
    np.testing.assert_allclose(_ours(relu_classifier, image, "eigencam", 0), expected, atol=TOLERANCE)


def test_ablation_of_a_signed_layer_matches_pytorch_grad_cam_at_batch_size_one(
    net: SmallNet, image: np.ndarray, tmp_path: Path
) -> None:
    """Before the ReLU the minimum is not 0: an ablated channel becomes min - 1e7 (models.cam_forward)."""
    classifier = _classifier(net, tmp_path, before_relu=True, batch_size=3)
    tensor = _input(classifier, image)
    assert float(net.conv2(net.pool1(net.relu1(net.conv1(tensor)))).detach().min()) < 0.0 < ABLATION_OFFSET
    expected = _reference(pytorch_grad_cam.AblationCAM, net, net.conv2, tensor, 1, batch_size=1)
    np.testing.assert_allclose(_ours(classifier, image, "ablationcam", 1), expected, atol=TOLERANCE)


def test_batch_size_does_not_change_the_forward_maps(net: SmallNet, image: np.ndarray, tmp_path: Path) -> None:
    one, many = _classifier(net, tmp_path, batch_size=1), _classifier(net, tmp_path, batch_size=64)
    for method in ("scorecam", "ablationcam"):
        np.testing.assert_allclose(one.explain(image, method, 2).cam, many.explain(image, method, 2).cam, rtol=1e-5)


def test_guided_backprop_matches_pytorch_grad_cam(
    relu_classifier: Classifier, net: SmallNet, image: np.ndarray
) -> None:
    tensor = _input(relu_classifier, image)
    expected = _guided_backprop(net, tensor, target_category=3)
    ours = relu_classifier.guided_backprop(image, 3)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(ours / scale, expected / scale, atol=TOLERANCE)


def test_guided_grad_cam_matches_pytorch_grad_cam(
    relu_classifier: Classifier, net: SmallNet, image: np.ndarray
) -> None:
    """pytorch-grad-cam's recipe: guided backprop x its (normalised, resized) Grad-CAM; max |.| over channels."""
    tensor = _input(relu_classifier, image)
    guided = _guided_backprop(net, tensor, target_category=0)
    grad_cam = _reference(pytorch_grad_cam.GradCAM, net, net.relu2, tensor, 0)
    expected = normalise(np.abs(guided * grad_cam[:, :, np.newaxis]).max(axis=-1))
    result = relu_classifier.explain(image, "guidedgradcam", 0)
    assert result.cam.shape == (SIZE, SIZE)
    np.testing.assert_allclose(normalise(result.cam), expected, atol=TOLERANCE)


@pytest.mark.parametrize("method", ["layercam", "eigencam", "scorecam", "ablationcam", "guidedgradcam"])
def test_several_classes_in_one_call_equal_one_call_each(
    relu_classifier: Classifier, image: np.ndarray, method: str
) -> None:
    """Multi-target CAM-ready run, shared forward passes, repeated guided rows: the same maps as one by one."""
    together = relu_classifier.explain_classes(image, method, [0, None, 3])
    for result, target in zip(together, [0, None, 3], strict=True):
        alone = relu_classifier.explain(image, method, target)
        assert result.target_label == alone.target_label
        np.testing.assert_allclose(result.cam, alone.cam, rtol=1e-4, atol=1e-6 * max(float(alone.cam.max()), 1.0))
