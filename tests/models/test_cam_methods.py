"""Every CAM method on the default model (VGG16, 240x240): valid maps that depend on the class.

Values are checked against pytorch-grad-cam on a small net in ``test_cam_reference``; here
the real model shows each method runs end to end: a finite map >= 0 on the CAM layer's grid
(the input's for Guided Grad-CAM), one per target, different for two classes (Eigen-CAM,
class-agnostic by definition, gives the same map). Score-CAM runs one forward pass of VGG16
per CAM-layer channel, so it gets one image, one test and an early, 64-channel CAM layer.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.cam_forward import ForwardModels
from models.cam_ready import ACTIVATIONS, TARGET_CLASS
from models.errors import ModelContractError
from models.inference import Classifier
from models.preprocess import preprocess
from models.synthetic import Lesion, synthetic_slice

CAM_GRID = (15, 15)  # block5_conv3 of VGG16 at 240x240
INPUT_GRID = (240, 240)
EARLY_CAM_LAYER = "functional_1/block1_conv2_1/Relu:0"  # 64 channels
TARGETS = [0, 3]  # glioma, pituitary


@pytest.fixture(scope="module")
def slice_image() -> np.ndarray:
    """A synthetic MR slice with one lesion, as 8-bit display pixels."""
    pixels = synthetic_slice(240, lesion=Lesion(x=0.62, y=0.4, radius=0.09), seed=3)
    return (pixels.astype(np.float32) * (255.0 / 4095.0)).astype(np.uint8)


def _check_maps(classifier: Classifier, image: np.ndarray, method: str, grid: tuple[int, int]) -> list[np.ndarray]:
    results = classifier.explain_classes(image, method, TARGETS)
    labels = classifier.manifest.labels
    assert [result.target_label for result in results] == [labels[target] for target in TARGETS]
    for result in results:
        assert result.cam_method == method and result.cam.shape == grid and result.cam.dtype == np.float32
        assert np.isfinite(result.cam).all() and result.cam.min() >= 0.0 and result.cam.max() > 0.0
        assert result.strength == pytest.approx(float(result.cam.max()))
    assert results[0].probabilities == results[1].probabilities
    return [result.cam for result in results]


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcampp", "xgradcam", "layercam", "ablationcam"])
def test_class_maps_differ_between_classes(
    default_classifier: Classifier, slice_image: np.ndarray, method: str
) -> None:
    first, second = _check_maps(default_classifier, slice_image, method, CAM_GRID)
    assert not np.allclose(first, second, rtol=1e-3, atol=1e-6)


def test_eigen_cam_is_one_map_for_every_class(default_classifier: Classifier, slice_image: np.ndarray) -> None:
    first, second = _check_maps(default_classifier, slice_image, "eigencam", CAM_GRID)
    np.testing.assert_array_equal(first, second)


def test_score_cam_on_the_default_model(default_classifier: Classifier, slice_image: np.ndarray) -> None:
    """Score-CAM runs the whole model once per CAM-layer channel: 512 VGG16 passes at block5
    (minutes on two cores), so this one test takes block1_conv2 (64 channels, at 240x240) as the
    CAM layer: the same model file, NHWC layout and batched masked runs, 8x fewer of them. One
    pass over the masked inputs serves both classes."""
    manifest = default_classifier.manifest.model_copy(update={"cam_layer": EARLY_CAM_LAYER})
    classifier = Classifier(manifest, cache_dir=Path(default_classifier.cam_ready_path).parent, intra_op_threads=2)
    first, second = _check_maps(classifier, slice_image, "scorecam", INPUT_GRID)
    assert not np.allclose(first, second, rtol=1e-3, atol=1e-6)


def test_guided_grad_cam_is_at_input_resolution(default_classifier: Classifier, slice_image: np.ndarray) -> None:
    first, second = _check_maps(default_classifier, slice_image, "guidedgradcam", INPUT_GRID)
    assert not np.allclose(first, second, rtol=1e-3, atol=1e-6)


def test_explain_classes_equals_one_explain_per_class(default_classifier: Classifier, slice_image: np.ndarray) -> None:
    together = default_classifier.explain_classes(slice_image, "gradcampp", [None, 1])
    alone = [default_classifier.explain(slice_image, "gradcampp", target) for target in (None, 1)]
    for batched, single in zip(together, alone, strict=True):
        assert batched.target_label == single.target_label
        np.testing.assert_allclose(batched.cam, single.cam, rtol=1e-4, atol=1e-6 * float(single.cam.max()))


def test_explain_classes_refuses_no_targets_and_bad_ones(
    default_classifier: Classifier, slice_image: np.ndarray
) -> None:
    with pytest.raises(ModelContractError, match="targets is empty"):
        default_classifier.explain_classes(slice_image, "gradcam", [])
    with pytest.raises(ModelContractError, match="target -1"):
        default_classifier.explain_classes(slice_image, "ablationcam", [0, -1])
    with pytest.raises(ModelContractError, match="batch_size must be at least 1"):
        Classifier(default_classifier.manifest, cache_dir=Path("unused"), batch_size=0)


def test_forward_models_reproduce_the_original_scores(default_classifier: Classifier, slice_image: np.ndarray) -> None:
    """The scorer and the head (fed NCHW activations, moved back to the layer's NHWC) give the
    logits whose softmax is the original model's output: the layout and the cut are right."""
    manifest = default_classifier.manifest
    batch = preprocess(slice_image, manifest)
    cam_ready = ort.InferenceSession(str(default_classifier.cam_ready_path), providers=["CPUExecutionProvider"])
    feeds = {manifest.input_name: batch, TARGET_CLASS: np.array([0], np.int64)}
    (acts,) = cam_ready.run([ACTIVATIONS], feeds)
    forward = ForwardModels(
        default_classifier.model_path,
        cam_layer=manifest.cam_layer,
        output_name=manifest.output_name,
        options=ort.SessionOptions(),
    )
    expected = default_classifier.predict_plain(batch)
    for logits in (forward.head_scores(iter([acts])), forward.masked_scores(iter([(manifest.input_name, batch)]))):
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
