"""The phantom set, a smoke run of the explanation report, and the published numbers it leaves behind."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models.explanation_metrics import KNOWN_ROWS, PUBLISHED_PATH, load_published
from models.faithfulness import centre_prior, pointing_game
from models.manifest import file_sha256
from training.explanation_report import ReportConfig, run
from training.phantoms import LABELS, phantom, phantom_set

torch.set_num_threads(1)

PUBLISHED_KEYS = {
    "pointing_game",
    "energy_pointing_game",
    "iou",
    "deletion_auc",
    "insertion_auc",
    "randomisation_spearman",
    "randomisation_spearman_phantom_cnn",
}


def test_phantoms_are_deterministic_by_seed() -> None:
    first, again, other = phantom(7, "glioma"), phantom(7, "glioma"), phantom(8, "glioma")
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.mask, again.mask)
    assert not np.array_equal(first.image, other.image)


def test_phantom_set_is_balanced_and_only_notumor_has_an_empty_mask() -> None:
    phantoms = phantom_set(8, seed=3)
    assert [p.label for p in phantoms] == [*LABELS, *LABELS]
    assert all(p.mask.any() == (p.label != "notumor") for p in phantoms)
    assert all(p.image.dtype == np.uint8 and p.image.shape == (64, 64) for p in phantoms)


@pytest.mark.parametrize("label", ["glioma", "meningioma", "pituitary"])
def test_masks_cover_the_drawn_lesion(label: str) -> None:
    for seed in range(5):
        lesion, healthy = phantom(seed, label), phantom(seed, "notumor")
        changed = lesion.image.astype(int) - healthy.image.astype(int)
        assert lesion.mask.sum() >= 12
        assert np.mean(lesion.image[lesion.mask]) > np.mean(healthy.image[lesion.mask]) + 30
        assert np.mean(np.abs(changed[~lesion.mask])) < 1.0  # nothing drawn outside the mask


def test_lesions_are_seldom_at_the_centre() -> None:
    lesions = [p for p in phantom_set(60, seed=2) if p.mask.any()]
    prior = centre_prior((64, 64))
    assert np.mean([pointing_game(prior, p.mask) for p in lesions]) < 0.2


def test_unknown_phantom_label() -> None:
    with pytest.raises(ValueError, match="unknown phantom label 'astrocytoma'"):
        phantom(0, "astrocytoma")


def tiny_served_model(folder: Path) -> Path:
    """An RGB NCHW CNN (Conv-Relu-GAP-Gemm) with its manifest: a stand-in for the VGG16 in the smoke run."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (4, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["conv"], ["cam"], name="relu"),
        helper.make_node("GlobalAveragePool", ["cam"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "tiny.onnx")
    manifest = {
        "name": "tiny-rgb",
        "version": "1",
        "labels": list(LABELS),
        "tumour_labels": ["glioma", "meningioma", "pituitary"],
        "no_tumour_label": "notumor",
        "input_name": "input",
        "output_name": "logits",
        "input_layout": "NCHW",
        "input_size": [32, 32],
        "channel_order": "RGB",
        "scale": 1 / 255,
        "output_is_probability": False,
        "cam_layer": "cam",
        "onnx_path": "tiny.onnx",
        "sha256": file_sha256(folder / "tiny.onnx"),
    }
    (folder / "tiny.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder / "tiny.json"


def test_report_smoke_run(tmp_path: Path) -> None:
    config = ReportConfig(
        train_count=24,
        heldout_count=8,
        size=32,
        epochs=1,
        max_steps=2,
        vgg_images=2,
        sanity_images=1,
        expensive_images=1,
        expensive_sanity_images=1,
        steps=4,
        threads=1,
        methods=("gradcam", "scorecam", "nosuchcam"),
        served_manifest=tiny_served_model(tmp_path),
    )
    table = run(config, tmp_path / "report.md", tmp_path / "metrics.json", tmp_path / "work")
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## phantom CNN" in markdown and "## served model: tiny-rgb 1" in markdown
    assert markdown.count("not available in this build: nosuchcam") == 2
    assert "| centre_prior |" in markdown and "| scorecam |" in markdown
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8")) == table
    assert set(table) == {"centre_prior", "gradcam", "scorecam"}
    for method, row in table.items():
        assert set(row) == PUBLISHED_KEYS
        assert all(0.0 <= row[key] <= 1.0 for key in ("pointing_game", "iou", "deletion_auc") if row[key] is not None)
        if method != "centre_prior":
            assert -1.0 <= (row["randomisation_spearman"] or 0.0) <= 1.0
    assert table["centre_prior"]["randomisation_spearman"] is None  # a map that ignores the model


def test_load_published_returns_the_committed_numbers() -> None:
    published = load_published()
    raw = json.loads(PUBLISHED_PATH.read_text(encoding="utf-8"))
    assert published == raw
    assert set(published) <= KNOWN_ROWS
    assert {"centre_prior", "gradcam", "hirescam"} <= set(published)
    assert all(set(row) == PUBLISHED_KEYS for row in published.values())


def test_load_published_without_a_file_is_empty(tmp_path: Path) -> None:
    assert load_published(tmp_path / "absent.json") == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"nosuchcam": {"iou": 0.5}}, "'nosuchcam' is not a known CAM method"),
        ({"gradcam": {"iou": "high"}}, "gradcam.iou must be a number or null"),
        ({"gradcam": [0.5]}, "'gradcam' must map metric names"),
        ([1, 2], "expected an object of methods"),
    ],
)
def test_load_published_refuses_a_malformed_file(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_published(path)
