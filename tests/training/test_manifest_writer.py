"""The manifest of a trained model: label defaults, refusals, and one preprocessing for train and serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models.errors import InvalidManifest
from models.manifest import file_sha256, load_manifest
from models.preprocess import preprocess
from tests.training.synthetic_folder import picture
from training.manifest_writer import (
    PIXEL_SCALE,
    InputSpec,
    build_manifest,
    label_spec,
    preprocessing_manifest,
    write_manifest,
)

LABELS = ("glioma", "meningioma", "notumor", "pituitary")


@dataclass(frozen=True)
class Exported:
    path: Path
    input_name: str = "image"
    output_name: str = "logits"
    cam_layer: str = "cam_features"


def test_every_label_but_no_tumour_is_a_tumour_by_default() -> None:
    spec = label_spec(LABELS, no_tumour_label="notumor")
    assert spec.tumour_labels == ("glioma", "meningioma", "pituitary")
    assert spec.no_tumour_label == "notumor"


def test_a_no_tumour_label_the_folder_lacks_is_dropped() -> None:
    spec = label_spec(("benign", "malignant"), no_tumour_label="notumor")
    assert spec == label_spec(("benign", "malignant"), no_tumour_label=None)
    assert spec.tumour_labels == ("benign", "malignant")


def test_explicit_tumour_labels_are_kept() -> None:
    assert label_spec(LABELS, ("glioma",), "notumor").tumour_labels == ("glioma",)


@pytest.mark.parametrize(
    ("labels", "tumours", "name", "message"),
    [
        (LABELS, ("astrocytoma",), "ok", "tumour_labels"),
        (LABELS, (), "bad name!", "name"),
        (("glioma", "glioma"), (), "ok", "labels must be unique"),
    ],
)
def test_bad_names_and_labels_are_refused_before_training(
    labels: tuple[str, ...], tumours: tuple[str, ...], name: str, message: str
) -> None:
    with pytest.raises(InvalidManifest, match=message):
        preprocessing_manifest(InputSpec(64), label_spec(labels, tumours, "notumor"), name=name)


def test_shipped_manifest_preprocesses_exactly_like_training(tmp_path: Path) -> None:
    onnx_file = tmp_path / "models" / "m.onnx"
    onnx_file.parent.mkdir()
    onnx_file.write_bytes(b"not really onnx, but hashed all the same")
    spec, labels = InputSpec(32, resize="pil_bicubic", intensity="percentile"), label_spec(LABELS)
    manifest = build_manifest(
        name="m", version="1", spec=spec, labels=labels, exported=Exported(onnx_file),
        manifest_dir=onnx_file.parent, temperature=1.5,
    )  # fmt: skip
    written = write_manifest(manifest, onnx_file.parent / "m.json")
    image = picture("meningioma", 5)
    np.testing.assert_array_equal(preprocess(image, written), preprocess(image, preprocessing_manifest(spec, labels)))
    assert written == load_manifest(onnx_file.parent / "m.json")
    assert written.onnx_path == str(onnx_file.resolve())
    assert manifest.onnx_path == "m.onnx"
    assert written.sha256 == file_sha256(onnx_file)
    assert (written.input_layout, written.channel_order, written.scale) == ("NCHW", "L", PIXEL_SCALE)
    assert (written.output_is_probability, written.cam_layer, written.temperature) == (False, "cam_features", 1.5)
    assert (written.input_policy.resize, written.input_policy.intensity) == ("pil_bicubic", "percentile")
    assert written.scope.raster_images


def test_three_channels_are_rgb(tmp_path: Path) -> None:
    manifest = preprocessing_manifest(InputSpec(32, channels=3), label_spec(LABELS))
    assert manifest.channel_order == "RGB"
    assert preprocess(picture("glioma", 1), manifest).shape == (1, 3, 32, 32)


def test_an_onnx_file_outside_the_manifest_folder_is_refused(tmp_path: Path) -> None:
    onnx_file = tmp_path / "elsewhere.onnx"
    onnx_file.write_bytes(b"x")
    with pytest.raises(InvalidManifest, match="is not inside the manifest folder"):
        build_manifest(
            name="m", version="1", spec=InputSpec(32), labels=label_spec(LABELS), exported=Exported(onnx_file),
            manifest_dir=tmp_path / "models", temperature=1.0,
        )  # fmt: skip
