"""The Classifier on the default model: valid explanations, and the same probabilities as the original."""

from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelContractError, UnknownCamMethod
from models.inference import Classifier
from models.manifest import ModelManifest
from models.preprocess import preprocess


def _brain_like(height: int = 300, width: int = 260) -> np.ndarray:
    """A dim grey ellipse with one bright blob, grayscale, not at model resolution."""
    rows, cols = np.mgrid[:height, :width]
    head = ((rows - height / 2) / (height * 0.42)) ** 2 + ((cols - width / 2) / (width * 0.4)) ** 2 <= 1
    blob = (rows - 110) ** 2 + (cols - 160) ** 2 <= 25**2
    return (head * 70 + blob * 180).astype(np.uint8)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_explanation_fields_are_valid(default_classifier: Classifier, method: str) -> None:
    result = default_classifier.explain(_brain_like(), method=method)
    probabilities = result.probabilities
    assert list(probabilities) == ["glioma", "meningioma", "notumor", "pituitary"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.label == max(probabilities, key=probabilities.__getitem__)
    assert result.target_label == result.label
    assert result.tumour_score == pytest.approx(1.0 - probabilities["notumor"])
    assert result.cam.shape == (240, 240) and result.cam.dtype == np.float32
    assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0
    assert set(result.timings_ms) == {"preprocess", "inference", "cam"}
    assert default_classifier.model_sha256 == default_classifier.manifest.sha256


def test_explicit_target_changes_the_map(default_classifier: Classifier) -> None:
    image = _brain_like()
    predicted = default_classifier.explain(image)
    other = next(i for i, label in enumerate(default_classifier.manifest.labels) if label != predicted.label)
    targeted = default_classifier.explain(image, target=other)
    assert targeted.target_label == default_classifier.manifest.labels[other]
    assert targeted.probabilities == predicted.probabilities
    assert not np.allclose(targeted.cam, predicted.cam)


def test_bad_method_and_target_are_refused(default_classifier: Classifier) -> None:
    with pytest.raises(UnknownCamMethod, match="scorecam"):
        default_classifier.explain(_brain_like(), method="scorecam")
    with pytest.raises(ModelContractError, match="target 4"):
        default_classifier.explain(_brain_like(), target=4)


def test_plain_and_cam_ready_models_agree(default_classifier: Classifier) -> None:
    rgb = np.stack([_brain_like(), _brain_like()[::-1], _brain_like()[:, ::-1]], axis=-1)
    result = default_classifier.explain(rgb)
    plain = default_classifier.predict_plain(preprocess(rgb, default_classifier.manifest))
    np.testing.assert_allclose(list(result.probabilities.values()), plain[0], atol=1e-5)


def test_tumour_score_without_a_no_tumour_label(default_manifest: ModelManifest, cam_cache_dir: Path) -> None:
    manifest = default_manifest.model_copy(update={"no_tumour_label": None, "tumour_labels": ["glioma", "pituitary"]})
    result = Classifier(manifest, cache_dir=cam_cache_dir).explain(_brain_like())
    assert result.tumour_score == pytest.approx(result.probabilities["glioma"] + result.probabilities["pituitary"])
