"""Train one architecture on synthetic pictures, then serve it the way Sightline does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from models.analysis import analyse_object
from models.calibration import TEMPERATURE_BOUNDS, fit_temperature
from models.inference import Classifier
from models.manifest import file_sha256, load_manifest
from models.raster import decode_raster
from tests.training.sightline_cli import models_prepare
from tests.training.synthetic_folder import LABELS, picture
from training.architectures import build
from training.data import class_files, stratified_split
from training.recipe import Hyperparameters, TrainingSummary, train, usable_temperature

HYPER = Hyperparameters(epochs=12, batch_size=8, seed=3)
ARCH, WIDTH = "custom_cnn", 8


@dataclass(frozen=True)
class TrainedModel:
    summary: TrainingSummary
    out_dir: Path
    classifier: Classifier


@pytest.fixture(scope="module")
def trained(labelled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    out_dir = tmp_path_factory.mktemp("trained")
    summary = train(ARCH, labelled_folder, out_dir / "models", hyper=HYPER, width=WIDTH, name="synthetic-cnn")
    manifest = load_manifest(summary.manifest_path)
    return TrainedModel(summary, out_dir, Classifier(manifest, cache_dir=out_dir / "cache", intra_op_threads=1))


def test_training_learns_the_synthetic_classes(trained: TrainedModel) -> None:
    summary = trained.summary
    assert [stats.epoch for stats in summary.history] == list(range(HYPER.epochs + 1))
    assert summary.history[summary.best_epoch].validation_accuracy == summary.validation_accuracy
    assert summary.validation_accuracy == max(stats.validation_accuracy for stats in summary.history)
    assert summary.validation_accuracy >= 0.75 > summary.history[0].validation_accuracy
    assert summary.history[-1].train_loss < summary.history[1].train_loss
    assert (summary.train_count, summary.validation_count, summary.skipped_files) == (36, 12, ())


def test_the_exported_file_scores_like_the_kept_epoch(trained: TrainedModel) -> None:
    assert trained.summary.onnx_validation_accuracy == trained.summary.validation_accuracy


def test_the_manifest_describes_the_exported_file(trained: TrainedModel) -> None:
    manifest = trained.classifier.manifest
    assert manifest.name == "synthetic-cnn"
    assert list(manifest.labels) == list(LABELS)
    assert (manifest.no_tumour_label, manifest.tumour_labels) == ("notumor", ["glioma", "meningioma", "pituitary"])
    assert manifest.sha256 == file_sha256(trained.summary.onnx_path)
    assert Path(manifest.onnx_path) == trained.summary.onnx_path.resolve()
    assert manifest.temperature == trained.summary.temperature
    assert (manifest.input_size, manifest.channel_order, manifest.output_is_probability) == ((64, 64), "L", False)
    assert sorted(p.name for p in trained.summary.manifest_path.parent.iterdir()) == [
        "synthetic-cnn.json",
        "synthetic-cnn.onnx",
    ]


def test_sightline_models_prepare_accepts_it(trained: TrainedModel) -> None:
    result = models_prepare(trained.summary.manifest_path.parent, "synthetic-cnn", trained.out_dir / "prepare")
    assert result.returncode == 0, result.stderr
    assert "synthetic-cnn 0.1.0 ready" in result.stdout
    assert "finite_difference_gradients" in result.stdout


def cam_layer_shape() -> tuple[int, int]:
    """Height and width of the architecture's CAM feature map for a 64 x 64 input, from torch."""
    features = build(ARCH, num_classes=len(LABELS), width=WIDTH).features(torch.zeros(1, 1, 64, 64))
    return int(features.shape[-2]), int(features.shape[-1])


def test_explain_gives_calibrated_probabilities_and_a_map(trained: TrainedModel) -> None:
    explanation = trained.classifier.explain(picture("pituitary", 99))
    assert sum(explanation.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert explanation.label == "pituitary"
    assert explanation.target_label == "pituitary"
    assert explanation.cam.shape == cam_layer_shape()
    assert explanation.cam.min() >= 0.0
    assert explanation.strength == explanation.cam.max() > explanation.cam.min()


def test_serving_the_validation_files_reproduces_accuracy_and_temperature(
    trained: TrainedModel, labelled_folder: Path
) -> None:
    """The split is seeded, so the validation files are known; Sightline's own decode and
    preprocessing of them must give the same accuracy and the same fitted temperature."""
    files = stratified_split(class_files(labelled_folder, LABELS), validation_fraction=0.25, seed=HYPER.seed)
    data = [path.read_bytes() for path, _ in files.validation]
    truth = np.array([label for _, label in files.validation])
    served = [analyse_object(item, trained.classifier, max_pixels=10**6).key.explanation.label for item in data]
    assert np.mean([LABELS.index(label) for label in served] == truth) == trained.summary.onnx_validation_accuracy
    raw = np.stack([trained.classifier.raw_probabilities(decode_raster(item).model_pixels) for item in data])
    # the plain model outputs logits here (output_is_probability is False): raw_probabilities soft-maxes them
    np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-5)
    temperature = round(fit_temperature(raw.astype(np.float64), truth), 4)
    assert temperature == pytest.approx(trained.summary.fitted_temperature, abs=2e-4)
    assert trained.summary.temperature == usable_temperature(trained.summary.fitted_temperature)


def test_the_same_seed_gives_the_same_model_file(trained: TrainedModel, labelled_folder: Path, tmp_path: Path) -> None:
    again = train(ARCH, labelled_folder, tmp_path, hyper=HYPER, width=WIDTH, name="synthetic-cnn")
    assert file_sha256(again.onnx_path) == file_sha256(trained.summary.onnx_path)
    assert again.history == trained.summary.history


@pytest.mark.parametrize(
    ("fitted", "written"),
    [(TEMPERATURE_BOUNDS[0], 1.0), (TEMPERATURE_BOUNDS[1], 1.0), (0.05004, 1.0), (0.06, 0.06), (1.7, 1.7)],
)
def test_a_temperature_on_a_bound_of_the_fit_is_not_written(fitted: float, written: float) -> None:
    assert usable_temperature(fitted) == written
