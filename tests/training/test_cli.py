"""``python -m training train``: every seed architecture exports a model ``sightline models prepare``
accepts, and folders or names that cannot make a model are refused with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.manifest import load_manifest
from tests.training.sightline_cli import models_prepare, train_cli
from tests.training.synthetic_folder import write_folder
from training.__main__ import main
from training.architectures import ARCHITECTURES
from training.recipe import Hyperparameters, train


def smoke_args(arch: str, data: Path, out: Path, *extra: str) -> list[str]:
    """One optimiser step of a narrow network: enough to export, not to learn."""
    return ["train", "--arch", arch, "--data", str(data), "--out", str(out), "--epochs", "1", "--max-steps", "1",
            "--width", "4", "--batch-size", "8", *extra]  # fmt: skip


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_exports_a_model_sightline_prepares(
    arch: str, labelled_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"seed-{arch.replace('_', '-')}"
    assert main(smoke_args(arch, labelled_folder, tmp_path / "models", "--name", name, "--version", "7")) == 0
    assert f"wrote {tmp_path / 'models' / name}.json" in capsys.readouterr().out
    manifest = load_manifest(tmp_path / "models" / f"{name}.json")
    assert (manifest.name, manifest.version, manifest.cam_layer) == (name, "7", "cam_features")
    result = models_prepare(tmp_path / "models", name, tmp_path / "prepare")
    assert result.returncode == 0, result.stderr
    assert f"{name} 7 ready" in result.stdout


def test_max_steps_ends_training_early(labelled_folder: Path, tmp_path: Path) -> None:
    summary = train("resnet", labelled_folder, tmp_path, hyper=Hyperparameters(epochs=3, max_steps=1), width=4)
    assert [stats.epoch for stats in summary.history] == [0, 1]


def test_zero_epochs_exports_the_untrained_model_with_the_labels_given(
    labelled_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    order = ["pituitary", "notumor", "meningioma", "glioma"]
    args = ["train", "--arch", "cbam", "--data", str(labelled_folder), "--out", str(tmp_path), "--epochs", "0",
            "--width", "4", "--labels", *order, "--tumour-labels", "pituitary"]  # fmt: skip
    assert main(args) == 0
    assert "kept epoch 0:" in capsys.readouterr().out
    raw = json.loads((tmp_path / "sightline-cbam.json").read_text())
    assert (raw["labels"], raw["tumour_labels"], raw["no_tumour_label"]) == (order, ["pituitary"], "notumor")
    assert raw["onnx_path"] == "sightline-cbam.onnx"


def test_a_one_class_folder_is_refused_by_the_real_command(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", per_class=3, labels=("glioma",))
    result = train_cli(smoke_args("resnet", tmp_path / "data", tmp_path / "out")[1:], tmp_path)
    assert result.returncode == 1
    assert "error: " in result.stderr
    assert "needs at least two class sub-folders, found ['glioma']" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--name", "no spaces allowed"), "name"),
        (("--tumour-labels", "astrocytoma"), "tumour_labels ['astrocytoma'] are not in labels"),
        (("--labels", "glioma", "pituitary", "other"), "sub-folder 'meningioma'"),
        (("--input-size", "40"), "input_size must be a multiple of 16"),
    ],
)
def test_bad_options_are_refused_with_one_line(
    extra: tuple[str, ...], message: str, labelled_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(smoke_args("resnet", labelled_folder, tmp_path / "out", *extra)) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("out/*.json"))


def test_an_empty_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    assert main(smoke_args("resnet", tmp_path / "data", tmp_path / "out")) == 1
    assert "needs at least two class sub-folders, found []" in capsys.readouterr().err


def test_an_unknown_architecture_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(smoke_args("vgg99", tmp_path, tmp_path))
    assert exited.value.code == 2
