"""Conformance of the explanation engine on the five seed architectures (``training.architectures``).

Each architecture gets random weights (batch-norm statistics and affine parameters too, so no
batch norm is the identity), is exported to ONNX, made CAM-ready by ``models.cam_ready`` and
run by ONNX Runtime on a random batch. Its outputs are compared with references that share
no code with the engine:

- torch autograd on the same torch module and weights (float32), for d logit[target] / d A
  (A = the CAM layer) and d logit[target] / d input;
- onnx-ad (``onnx_ad.reverse``, a source-transforming ONNX autodiff) on the head of the
  exported graph, cut out with the CAM layer as its input;
- pytorch-grad-cam's own CAM formulas, on torch's activations and gradients.

Gradient error is ``max |g - g_ref| / max |g_ref|`` over the whole batch (the worst
elementwise error relative to the largest reference gradient, so it does not blow up where
a gradient is near zero); it must be <= 1e-4. Maps are compared after ``models.cam.normalise``
by max abs difference, <= 1e-3.
"""

import functools
import inspect
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx_ad import reverse
from reference.gradcam import pytorch_grad_cam

from models import cam_ready
from models.cam import METHODS, normalise
from training.architectures import ARCHITECTURES, CamClassifier, ExportedModel, build, export_onnx

NUM_CLASSES = 4
INPUT_SIZE = 32
WIDTH = 4
TARGETS = np.array([1, 3], dtype=np.int64)  # one per sample, different, so a mixed-up batch shows
GRADIENT_TOLERANCE = 1e-4
MAP_TOLERANCE = 1e-3
REQUIRED_METHODS = ("gradcam", "hirescam")
PYTORCH_GRAD_CAM = {  # our METHODS name -> pytorch-grad-cam's class of the same paper
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
}
NOT_COMPARED_WITH_PYTORCH_GRAD_CAM = {
    "eigencam": "Eigen-CAM's singular-vector sign is Sightline's own convention (models.cam.eigen_cam), "
    "pytorch-grad-cam keeps LAPACK's; compared with the same formula on torch's tensors instead",
}
Array = npt.NDArray[np.float32]
Targets = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False, repr=False)  # hashed by identity: Sightline runs are cached per case
class Case:
    """One architecture: its torch module, export, random batch and torch autograd references."""

    arch: str
    model: CamClassifier
    exported: ExportedModel
    images: Array
    logits: Array
    activations: Array
    gradients: Array
    input_gradients: Array


def relative_error(actual: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """max |actual - reference| / max |reference|: the module docstring's gradient norm."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, f"shape {actual.shape} != reference {reference.shape}"
    scale = float(np.abs(reference).max())
    assert scale > 0.0, "the reference is all zero: the comparison could not fail"
    return float(np.abs(actual - reference).max()) / scale


def randomise(model: CamClassifier, generator: torch.Generator) -> None:
    """Random batch-norm statistics and affine parameters, so folding them is really tested."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(size, generator=generator))


def torch_references(model: CamClassifier, images: Array, targets: Targets) -> tuple[Array, Array, Array, Array]:
    """Logits, CAM activations, d sum_n logit[n, t_n] / d A and / d input by torch autograd
    (samples do not interact in eval mode, so the summed score gives per-sample gradients)."""
    inputs = torch.from_numpy(images).requires_grad_(True)
    logits, activations = model.forward_with_features(inputs)
    score = logits[torch.arange(len(targets)), torch.from_numpy(targets)].sum()
    gradients, input_gradients = torch.autograd.grad(score, [activations, inputs])
    arrays = (logits, activations, gradients, input_gradients)
    return tuple(np.asarray(a.detach().numpy(), dtype=np.float32) for a in arrays)  # type: ignore[return-value]


def make_case(arch: str, folder: Path, *, fold_batch_norm: bool = True) -> Case:
    """``arch`` with seeded random weights, exported into ``folder``, a random batch, torch references."""
    generator = torch.Generator().manual_seed(zlib.crc32(arch.encode()))
    torch.manual_seed(zlib.crc32(arch.encode()))
    model = build(arch, num_classes=NUM_CLASSES, width=WIDTH, input_size=INPUT_SIZE)
    with torch.no_grad():
        randomise(model, generator)
    path = folder / f"{arch}.onnx"
    exported = export_onnx(model, path, input_size=INPUT_SIZE, in_channels=1, fold_batch_norm=fold_batch_norm)
    images = torch.randn(len(TARGETS), 1, INPUT_SIZE, INPUT_SIZE, generator=generator).numpy()
    return Case(arch, model, exported, images, *torch_references(model, images, TARGETS))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(request.param, tmp_path_factory.mktemp(request.param))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@functools.cache
def sightline_outputs(case: Case, targets: tuple[int, ...] = tuple(TARGETS), **options: str) -> dict[str, Array]:
    """The CAM-ready model's outputs on the case's batch for ``target_class`` = ``targets``, by name
    (built and run once per case and arguments)."""
    cam_model = cam_ready.make_cam_ready(
        onnx.load(str(case.exported.path)),
        cam_layer=case.exported.cam_layer,
        output_name=case.exported.output_name,
        output_is_probability=False,
        **options,  # type: ignore[arg-type]
    )
    runner = session(cam_model)
    names = [output.name for output in runner.get_outputs()]
    feeds = {case.exported.input_name: case.images, cam_ready.TARGET_CLASS: np.array(targets, np.int64)}
    values = runner.run(names, feeds)
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def test_export_is_valid_onnx_and_matches_torch(case: Case) -> None:
    model = onnx.load(str(case.exported.path))
    onnx.checker.check_model(model, full_check=True)
    assert [output.name for output in model.graph.output] == [case.exported.output_name]
    assert [opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")] == [17]
    assert any(case.exported.cam_layer in node.output for node in model.graph.node)
    (logits,) = session(model).run(None, {case.exported.input_name: case.images})
    assert relative_error(logits, case.logits) <= GRADIENT_TOLERANCE


def test_cam_module_output_is_the_cam_features(case: Case) -> None:
    """The torch module's named CAM layer is the tensor exported as ``cam_features``."""
    captured: list[torch.Tensor] = []
    handle = case.model.cam_module().register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        case.model(torch.from_numpy(case.images))
    handle.remove()
    assert captured[0].dim() == 4
    np.testing.assert_array_equal(captured[0].numpy(), case.activations)


def test_gradients_match_torch_autograd(case: Case) -> None:
    outputs = sightline_outputs(case)
    assert relative_error(outputs[cam_ready.ACTIVATIONS], case.activations) <= GRADIENT_TOLERANCE
    assert relative_error(outputs[cam_ready.GRADIENTS], case.gradients) <= GRADIENT_TOLERANCE
    probabilities = torch.softmax(torch.from_numpy(case.logits), dim=-1).numpy()
    assert relative_error(outputs[cam_ready.PROBABILITIES], probabilities) <= GRADIENT_TOLERANCE


def test_predicted_target_matches_torch_autograd(case: Case) -> None:
    """``target_class`` -1 explains each sample's predicted class (the argmax of torch's logits)."""
    predicted = case.logits.argmax(axis=-1)
    _, _, reference, _ = torch_references(case.model, case.images, predicted)
    outputs = sightline_outputs(case, targets=(cam_ready.PREDICTED_TARGET,) * len(predicted))
    assert relative_error(outputs[cam_ready.GRADIENTS], reference) <= GRADIENT_TOLERANCE


def test_engine_has_the_required_methods() -> None:
    assert set(REQUIRED_METHODS) <= set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_match_the_method_on_torch_gradients(case: Case, method: str) -> None:
    outputs = sightline_outputs(case)
    cam_method = METHODS[method]
    ours = normalise_each(cam_method(outputs[cam_ready.ACTIVATIONS], outputs[cam_ready.GRADIENTS]))
    reference = normalise_each(cam_method(case.activations, case.gradients))
    assert_maps_match(ours, reference)


def test_every_gradient_method_has_a_pytorch_grad_cam_reference_or_a_reason() -> None:
    """A method added to METHODS must be compared below, or say here why not (Eigen-CAM's
    documented sign relation is asserted in tests/models/test_cam_reference.py)."""
    assert set(METHODS) == set(PYTORCH_GRAD_CAM) | set(NOT_COMPARED_WITH_PYTORCH_GRAD_CAM)


@pytest.mark.parametrize("method", sorted(PYTORCH_GRAD_CAM))
def test_maps_match_pytorch_grad_cam(case: Case, method: str) -> None:
    """pytorch-grad-cam's formula (an independent implementation of the paper) on torch's tensors."""
    outputs = sightline_outputs(case)
    ours = normalise_each(METHODS[method](outputs[cam_ready.ACTIVATIONS], outputs[cam_ready.GRADIENTS]))
    assert_maps_match(ours, normalise_each(pytorch_grad_cam_maps(case, PYTORCH_GRAD_CAM[method])))


def normalise_each(maps: Array) -> Array:
    return np.stack([normalise(one) for one in maps])


def assert_maps_match(ours: Array, reference: Array) -> None:
    assert any(float(np.ptp(one)) > 0.0 for one in reference), "every reference map is constant: nothing compared"
    assert float(np.abs(ours - reference).max()) <= MAP_TOLERANCE


def pytorch_grad_cam_maps(case: Case, class_name: str) -> Array:
    """pytorch-grad-cam's ``get_cam_image`` and its ReLU (``BaseCAM.compute_cam_per_layer``)."""
    cam_class: Any = getattr(pytorch_grad_cam, class_name)
    explainer = cam_class(model=case.model, target_layers=[case.model.cam_module()])
    targets = [pytorch_grad_cam.utils.model_targets.ClassifierOutputTarget(int(t)) for t in TARGETS]
    inputs = torch.from_numpy(case.images)
    try:
        layer = case.model.cam_module()
        cams = explainer.get_cam_image(inputs, layer, targets, case.activations, case.gradients, eigen_smooth=False)
    finally:
        explainer.activations_and_grads.release()
    return np.maximum(np.asarray(cams, dtype=np.float32), 0.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"arch": "vgg"}, "arch 'vgg' is not one of"),
        ({"width": 0}, "width must be >= 1"),
        ({"input_size": 40}, "input_size must be a multiple of 16"),
    ],
)
def test_build_refuses_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(**{"arch": "resnet", "num_classes": NUM_CLASSES, **arguments})


def head_model(model: onnx.ModelProto, cam_layer: str, score: str, cam_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The nodes between ``cam_layer`` and ``score``, with ``cam_layer`` as a graph input of the
    batch's static shape, and every shape inferred (onnx-ad's Conv and Slice rules need them)."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    chosen: set[str] = set()
    pending = [score]
    while pending:
        name = pending.pop()
        if name == cam_layer or name not in producers or producers[name].name in chosen:
            continue
        chosen.add(producers[name].name)
        pending.extend(producers[name].input)
    nodes = [node for node in graph.node if node.name in chosen]
    used = {name for node in nodes for name in node.input}
    cam_input = helper.make_tensor_value_info(cam_layer, TensorProto.FLOAT, cam_shape)
    inputs = [cam_input, *(info for info in graph.input if info.name in used)]
    outputs = [info for info in graph.output if info.name == score]
    initializers = [init for init in graph.initializer if init.name in used]
    head = helper.make_graph(nodes, "head", inputs, outputs, initializers)
    head_model = helper.make_model(head, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return onnx.shape_inference.infer_shapes(head_model, strict_mode=True)


def onnx_ad_gradients(case: Case, activations: Array) -> Array:
    """d logit[target] / d A by onnx-ad's reverse mode on the cut head, seeded one-hot."""
    exported = case.exported
    head = head_model(onnx.load(str(exported.path)), exported.cam_layer, exported.output_name, activations.shape)
    adjoint = reverse(head, inputs=[exported.cam_layer], outputs=[exported.output_name], layout="onnx")
    seed = np.eye(NUM_CLASSES, dtype=np.float32)[TARGETS][..., None]  # [N, K, 1 seed]
    feeds: dict[str, npt.NDArray[Any]] = {exported.cam_layer: activations, f"adj_{exported.output_name}": seed}
    runner = session(adjoint)
    feeds.update({i.name: case.images for i in runner.get_inputs() if i.name == exported.input_name})
    (gradients,) = runner.run([f"adj_{exported.cam_layer}"], feeds)
    return np.asarray(gradients[..., 0], dtype=np.float32)


def test_onnx_ad_reference_agrees_with_torch(case: Case) -> None:
    """The second reference is itself sound: onnx-ad on the exported head equals torch autograd."""
    assert relative_error(onnx_ad_gradients(case, case.activations), case.gradients) <= GRADIENT_TOLERANCE


def test_gradients_match_onnx_ad(case: Case) -> None:
    outputs = sightline_outputs(case)
    reference = onnx_ad_gradients(case, outputs[cam_ready.ACTIVATIONS])
    assert relative_error(outputs[cam_ready.GRADIENTS], reference) <= GRADIENT_TOLERANCE


def test_input_gradients_match_torch_autograd(case: Case) -> None:
    if "input_gradients" not in inspect.signature(cam_ready.make_cam_ready).parameters:
        pytest.skip("make_cam_ready has no input_gradients option yet (engineer A is adding it)")
    outputs = sightline_outputs(case, input_gradients="plain")
    assert relative_error(outputs["input_gradients"], case.input_gradients) <= GRADIENT_TOLERANCE


def test_unfolded_batch_norm_gradients_match_torch_autograd(tmp_path: Path) -> None:
    """Torch folds eval-mode batch norm into the Conv before it, so the cases above never show the
    engine a BatchNormalization node; this export keeps them, on the whole input-to-score path."""
    if "input_gradients" not in inspect.signature(cam_ready.make_cam_ready).parameters:
        pytest.skip("make_cam_ready has no input_gradients option yet (engineer A is adding it)")
    case = make_case("resnet", tmp_path, fold_batch_norm=False)
    graph = onnx.load(str(case.exported.path)).graph
    assert "BatchNormalization" in {node.op_type for node in graph.node}
    outputs = sightline_outputs(case, input_gradients="plain")
    assert relative_error(outputs[cam_ready.GRADIENTS], case.gradients) <= GRADIENT_TOLERANCE
    assert relative_error(outputs["input_gradients"], case.input_gradients) <= GRADIENT_TOLERANCE


def test_default_cam_layer_is_the_named_one(case: Case) -> None:
    if not hasattr(cam_ready, "default_cam_layer"):
        pytest.skip("models.cam_ready.default_cam_layer does not exist yet (engineer A is adding it)")
    model = onnx.load(str(case.exported.path))
    assert cam_ready.default_cam_layer(model, case.exported.output_name) == case.exported.cam_layer
