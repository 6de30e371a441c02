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
    tumours = {label: probabilities[label] for label in ("glioma", "meningioma", "pituitary")}
    assert result.target_label == max(tumours, key=tumours.__getitem__)  # never "notumor"
    assert result.tumour_score == pytest.approx(1.0 - probabilities["notumor"])
    assert result.cam.shape == (15, 15) and result.cam.dtype == np.float32  # the CAM layer's grid, not resized
    assert result.cam.min() >= 0.0 and result.strength == pytest.approx(float(result.cam.max()))
    assert result.cam_method == method
    assert result.probabilities == pytest.approx(result.raw_probabilities, abs=1e-6)  # temperature 1
    assert set(result.timings_ms) == {"preprocess", "inference", "cam"}
    assert default_classifier.model_sha256 == default_classifier.manifest.sha256


def test_explicit_target_changes_the_map(default_classifier: Classifier) -> None:
    image = _brain_like()
    predicted = default_classifier.explain(image)
    other = next(i for i, label in enumerate(default_classifier.manifest.labels) if label != predicted.target_label)
    targeted = default_classifier.explain(image, target=other)
    assert targeted.target_label == default_classifier.manifest.labels[other] != predicted.target_label
    assert targeted.probabilities == predicted.probabilities
    assert not np.allclose(targeted.cam, predicted.cam)


def test_bad_method_and_target_are_refused(default_classifier: Classifier) -> None:
    with pytest.raises(UnknownCamMethod, match="fullgrad"):
        default_classifier.explain(_brain_like(), method="fullgrad")
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


def test_temperature_scales_the_probabilities_not_the_prediction(
    default_manifest: ModelManifest, cam_cache_dir: Path
) -> None:
    hot = Classifier(default_manifest.model_copy(update={"temperature": 3.0}), cache_dir=cam_cache_dir)
    result = hot.explain(_brain_like())
    raw = np.array(list(result.raw_probabilities.values()))
    expected = np.exp(np.log(raw) / 3.0) / np.exp(np.log(raw) / 3.0).sum()
    np.testing.assert_allclose(list(result.probabilities.values()), expected, atol=1e-6)
    assert result.label == max(result.raw_probabilities, key=result.raw_probabilities.__getitem__)
    assert max(result.probabilities.values()) < max(result.raw_probabilities.values())  # T > 1 softens


def test_the_map_explains_the_most_likely_tumour_class_even_when_no_tumour_wins(
    default_classifier: Classifier,
) -> None:
    blank = np.full((240, 240), 3, np.uint8)  # an almost empty picture: the model says "notumor"
    result = default_classifier.explain(blank)
    tumours = {label: p for label, p in result.probabilities.items() if label != "notumor"}
    assert result.target_label == max(tumours, key=tumours.__getitem__)
    by_index = default_classifier.explain(blank, target=default_classifier.manifest.labels.index(result.target_label))
    np.testing.assert_allclose(result.cam, by_index.cam, rtol=1e-5, atol=1e-7)  # the in-graph choice is that class
