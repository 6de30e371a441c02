"""Every frame scored, and the model input made like the model's own package makes it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from phantoms import dicom_bytes, enhanced_volume, package_probabilities, training_style_jpeg
from PIL import Image

from models.analysis import analyse_object
from models.inference import Classifier
from models.synthetic import Lesion, synthetic_slice


def test_every_frame_of_a_multiframe_object_is_scored_with_its_position(default_classifier: Classifier) -> None:
    positions = [20.0, 0.0, 10.0, 30.0, 5.0]
    analysis = analyse_object(enhanced_volume(positions, {0, 3}), default_classifier, max_pixels=10**7)
    assert [frame.index for frame in analysis.frames] == [0, 1, 2, 3, 4]
    assert [frame.position for frame in analysis.frames] == positions
    scores = [frame.explanation.tumour_score for frame in analysis.frames]
    assert len(set(scores)) == 5  # five different pictures, five different scores
    assert analysis.key.explanation.tumour_score == max(scores)
    assert analysis.spacing == (0.9, 0.9)
    assert analysis.display.shape == (160, 160) and analysis.cam.shape == (160, 160)
    for frame in analysis.frames:
        assert frame.explanation.target_label in ("glioma", "meningioma", "pituitary")
    # each frame's score is the model's score of that frame alone
    single = analyse_object(dicom_bytes(synthetic_slice(160, seed=2)), default_classifier, max_pixels=10**7)
    assert single.key.explanation.tumour_score == pytest.approx(scores[2], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_dicom_made_from_a_jpeg_scores_like_the_package_whatever_window_it_stores(
    default_classifier: Classifier, seed: int
) -> None:
    """Issue goal: within 0.02 of the package on the JPEG, for any stored window."""
    jpeg = training_style_jpeg(seed, Lesion(0.6, 0.4, 0.1) if seed else None)
    expected = package_probabilities(jpeg)
    grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))  # the JPEG's own grey levels
    variants = {
        "8-bit, no window": dicom_bytes(grey, bits=8),
        "8-bit, narrow window": dicom_bytes(grey, bits=8, WindowCenter=40, WindowWidth=80),
        "16-bit, wide window": dicom_bytes(grey.astype(np.uint16) * 4, WindowCenter=600, WindowWidth=1200),
        "16-bit, rescaled": dicom_bytes(grey.astype(np.uint16) + 1000, RescaleSlope=1, RescaleIntercept=-1000),
    }
    for name, data in variants.items():
        analysis = analyse_object(data, default_classifier, max_pixels=10**7)
        raw = np.array(list(analysis.key.explanation.raw_probabilities.values()))
        assert np.abs(raw - expected).max() < 0.02, name
    uploaded_jpeg = analyse_object(jpeg, default_classifier, max_pixels=10**7)
    raw = np.array(list(uploaded_jpeg.key.explanation.raw_probabilities.values()))
    assert np.abs(raw - expected).max() < 0.02
