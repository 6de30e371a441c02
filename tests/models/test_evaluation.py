"""Evaluation metrics, the labelled-folder reader and the report: exact values on small examples."""

import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from models.calibration import (
    PLOT_HEIGHT,
    PLOT_WIDTH,
    apply_temperature,
    expected_calibration_error,
    negative_log_likelihood,
)
from models.errors import ModelContractError
from models.evaluation import (
    LabelledFolderError,
    SkippedFile,
    confusion_matrix,
    evaluate,
    labelled_files,
    predict_folder,
    roc_auc,
)
from models.evaluation_report import write_report
from models.pixels import decode_image

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
# truth 0 0 0 1 1 2; argmax 0 0 1 1 2 2; class 3 is neither present nor predicted
PROBABILITIES = np.array(
    [
        [0.70, 0.20, 0.10, 0.0],
        [0.60, 0.30, 0.10, 0.0],
        [0.30, 0.50, 0.20, 0.0],
        [0.35, 0.45, 0.20, 0.0],
        [0.10, 0.40, 0.50, 0.0],
        [0.25, 0.15, 0.60, 0.0],
    ]
)
TRUTH = np.array([0, 0, 0, 1, 1, 2])


def test_roc_auc_counts_ties_as_one_half() -> None:
    # positives 0.8, 0.5, 0.5 against negatives 0.5, 0.3: 1 + 1 + 0.5 + 1 + 0.5 + 1 = 5 of 6 pairs
    assert roc_auc([0.8, 0.5, 0.5, 0.5, 0.3], [True, True, True, False, False]) == pytest.approx(5 / 6)


def test_roc_auc_of_separable_reversed_and_identical_scores() -> None:
    positives = [False, False, True, True]
    assert roc_auc([0.1, 0.2, 0.8, 0.9], positives) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], positives) == 0.0
    assert roc_auc([0.4, 0.4, 0.4, 0.4], positives) == 0.5


def test_roc_auc_is_undefined_without_positives_or_negatives() -> None:
    assert roc_auc([0.1, 0.9], [False, False]) is None
    assert roc_auc([0.1, 0.9], [True, True]) is None
    with pytest.raises(ValueError, match="as many as positives"):
        roc_auc([0.1, 0.9, 0.5], [True, False])
    with pytest.raises(ValueError, match="must be finite"):
        roc_auc([0.1, np.inf], [True, False])


def test_confusion_matrix_rows_are_truth_columns_are_predictions() -> None:
    expected = [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert confusion_matrix(TRUTH, PROBABILITIES.argmax(axis=1), 4).tolist() == expected


def test_evaluate_per_class_metrics_by_hand() -> None:
    report = evaluate(PROBABILITIES, TRUTH, LABELS, 1.0, model="toy 1")
    assert report.count == 6
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.confusion == ((2, 1, 0, 0), (0, 1, 1, 0), (0, 0, 1, 0), (0, 0, 0, 0))
    rows = [(c.label, c.support, c.precision, c.recall, c.f1, c.roc_auc) for c in report.classes]
    assert rows == [
        ("glioma", 3, 1.0, pytest.approx(2 / 3), pytest.approx(0.8), pytest.approx(8 / 9)),
        ("meningioma", 2, 0.5, 0.5, 0.5, pytest.approx(6 / 8)),
        ("notumor", 1, 0.5, 1.0, pytest.approx(2 / 3), 1.0),
        ("pituitary", 0, None, None, None, None),
    ]
    assert report.macro_precision == pytest.approx(2 / 3)
    assert report.macro_recall == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert report.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report.macro_roc_auc == pytest.approx((8 / 9 + 0.75 + 1.0) / 3)
    # T = 1 only renormalises (zeros are clipped to 1e-12 first)
    assert report.nll_before == pytest.approx(report.nll_after) == negative_log_likelihood(PROBABILITIES, TRUTH)
    assert report.ece_before == pytest.approx(report.ece_after) == expected_calibration_error(PROBABILITIES, TRUTH)


def test_evaluate_calibrates_with_the_temperature() -> None:
    plain = evaluate(PROBABILITIES, TRUTH, LABELS, 1.0)
    warm = evaluate(PROBABILITIES, TRUTH, LABELS, 2.0)
    assert warm.temperature == 2.0
    assert (warm.confusion, warm.accuracy, warm.nll_before, warm.ece_before) == (
        plain.confusion,
        plain.accuracy,
        plain.nll_before,
        plain.ece_before,
    )
    assert warm.nll_after == pytest.approx(negative_log_likelihood(PROBABILITIES, TRUTH, 2.0))
    assert warm.ece_after == pytest.approx(expected_calibration_error(apply_temperature(PROBABILITIES, 2.0), TRUTH))
    assert warm.ece_after != warm.ece_before
    assert [b.count for b in warm.reliability_after] != [b.count for b in warm.reliability_before]


def test_evaluate_refuses_label_names_that_do_not_match_the_columns() -> None:
    with pytest.raises(ValueError, match="3 label names for 4 probability columns"):
        evaluate(PROBABILITIES, TRUTH, LABELS[:3], 1.0)


def test_report_as_dict_is_plain_json() -> None:
    skipped = (SkippedFile(index=4, path="glioma/bad.png", reason="UnreadableRaster: truncated"),)
    report = evaluate(PROBABILITIES, TRUTH, LABELS, 1.5, model="toy 1", skipped=skipped)
    as_dict = report.as_dict()
    assert json.loads(json.dumps(as_dict, allow_nan=False)) == as_dict
    assert as_dict["confusion"][0] == [2, 1, 0, 0]
    assert as_dict["classes"][3] == {
        "label": "pituitary",
        "support": 0,
        "precision": None,
        "recall": None,
        "f1": None,
        "roc_auc": None,
    }
    assert as_dict["skipped"] == [{"index": 4, "path": "glioma/bad.png", "reason": "UnreadableRaster: truncated"}]
    assert len(as_dict["reliability_before"]) == 15


def test_write_report_writes_json_markdown_and_png(tmp_path: Path) -> None:
    skipped = (SkippedFile(index=4, path="glioma/bad.png", reason="UnreadableRaster: truncated"),)
    report = evaluate(PROBABILITIES, TRUTH, LABELS, 1.0, model="toy 1", skipped=skipped)
    written = write_report(report, tmp_path / "out")
    assert [p.name for p in written] == ["evaluation.json", "evaluation.md", "reliability.png"]
    assert json.loads(written[0].read_text()) == report.as_dict()
    markdown = written[1].read_text()
    assert markdown.startswith("# Evaluation of toy 1\n")
    assert "| Accuracy | 0.667 |" in markdown
    assert "| glioma | 3 | 1.000 | 0.667 | 0.800 | 0.889 |" in markdown
    assert "| pituitary | 0 | n/a | n/a | n/a | n/a |" in markdown
    assert "| truth \\ predicted | glioma | meningioma | notumor | pituitary |" in markdown
    assert "| meningioma | 0 | 1 | 1 | 0 |" in markdown
    assert "- 4: `glioma/bad.png`: UnreadableRaster: truncated" in markdown
    image = cv2.imread(str(written[2]))
    assert image.shape == (PLOT_HEIGHT, PLOT_WIDTH, 3)


def test_markdown_of_an_anonymous_clean_run_has_no_skipped_section(tmp_path: Path) -> None:
    (json_path, md_path, _) = write_report(evaluate(PROBABILITIES, TRUTH, LABELS, 1.0), tmp_path)
    assert md_path.read_text().startswith("# Evaluation of the classifier\n")
    assert "Skipped" not in md_path.read_text()
    assert json.loads(json_path.read_text())["model"] is None


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_labelled_files_maps_aliases_and_picks_image_files(tmp_path: Path) -> None:
    root = tmp_path / "Training"
    expected = [
        (_touch(root / "Glioma_Tumor" / "a.JPG"), 0),
        (_touch(root / "Glioma_Tumor" / "nested" / "b.jpeg"), 0),
        (_touch(root / "PITUITARY" / "1.2.840.5"), 3),  # UID-named DICOM
        (_touch(root / "PITUITARY" / "IM0001"), 3),  # extension-less DICOM
        (_touch(root / "PITUITARY" / "c.dcm"), 3),
        (_touch(root / "no_tumor" / "d.png"), 2),
    ]
    _touch(root / "README.md")
    _touch(root / "Glioma_Tumor" / "notes.txt")
    _touch(root / "Glioma_Tumor" / ".DS_Store")
    _touch(root / "no_tumor" / ".thumbs" / "e.png")
    _touch(root / ".cache" / "f.png")
    (root / "meningioma_tumor").mkdir()
    assert labelled_files(root, LABELS) == expected


@pytest.mark.parametrize("alias", ["no_tumour", "notumour", "NoTumor", "no_tumor"])
def test_labelled_files_accepts_every_no_tumour_spelling(tmp_path: Path, alias: str) -> None:
    path = _touch(tmp_path / alias / "a.png")
    assert labelled_files(tmp_path, LABELS) == [(path, 2)]


def test_labelled_files_refuses_an_unknown_folder_by_name(tmp_path: Path) -> None:
    _touch(tmp_path / "glioma" / "a.png")
    _touch(tmp_path / "astrocytoma" / "b.png")
    with pytest.raises(LabelledFolderError, match=r"sub-folder 'astrocytoma' .* names no label"):
        labelled_files(tmp_path, LABELS)


def test_labelled_files_applies_an_alias_only_when_its_label_exists(tmp_path: Path) -> None:
    _touch(tmp_path / "no_tumor" / "a.png")
    with pytest.raises(LabelledFolderError, match="sub-folder 'no_tumor'"):
        labelled_files(tmp_path, ["glioma", "healthy"])


def test_labelled_files_refuses_a_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(LabelledFolderError, match="is not a folder"):
        labelled_files(tmp_path / "missing", LABELS)
    _touch(tmp_path / "glioma" / "notes.txt")
    with pytest.raises(LabelledFolderError, match="holds no image files"):
        labelled_files(tmp_path, LABELS)


def _grey_png(path: Path, level: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((16, 16), level, dtype=np.uint8))
    return path


def _brightness(data: bytes) -> npt.NDArray[np.float64]:
    """A stand-in model: P(class 0) is the mean brightness."""
    bright = float(decode_image(data).pixels.mean()) / 255.0
    return np.array([bright, 1.0 - bright])


def test_predict_folder_skips_unreadable_files_and_keeps_going(tmp_path: Path) -> None:
    files = [
        (_grey_png(tmp_path / "a" / "1.png", 255), 0),
        (_touch(tmp_path / "a" / "2.png", b"\x89PNG\r\n\x1a\n truncated"), 0),
        (tmp_path / "b" / "gone.png", 1),  # listed, then deleted
        (_grey_png(tmp_path / "b" / "3.png", 51), 1),
    ]
    predictions = predict_folder(files, _brightness, root=tmp_path)
    np.testing.assert_allclose(predictions.probabilities, [[1.0, 0.0], [0.2, 0.8]])
    assert predictions.labels.tolist() == [0, 1]
    assert predictions.paths == ("a/1.png", "b/3.png")
    assert [(s.index, s.path, s.reason.split(":")[0]) for s in predictions.skipped] == [
        (1, "a/2.png", "UnreadableRaster"),
        (2, "b/gone.png", "FileNotFoundError"),
    ]


def test_predict_folder_without_a_root_shows_full_paths_and_may_end_empty(tmp_path: Path) -> None:
    bad = _touch(tmp_path / "a" / "bad.jpg", b"\xff\xd8\xff not really")
    predictions = predict_folder([(bad, 0)], _brightness)
    assert predictions.probabilities.shape == (0, 0)
    assert predictions.labels.size == 0
    assert [s.path for s in predictions.skipped] == [str(bad)]


def test_predict_folder_refuses_predictions_of_changing_shape(tmp_path: Path) -> None:
    files = [(_grey_png(tmp_path / f"{i}.png", 100), 0) for i in range(2)]
    outputs = iter([np.array([0.5, 0.5]), np.array([0.2, 0.3, 0.5])])
    with pytest.raises(ModelContractError, match=r"has shape \(3,\), expected \(2,\)"):
        predict_folder(files, lambda _: next(outputs))
    with pytest.raises(ModelContractError, match=r"has shape \(1, 2\), expected \(K,\)"):
        predict_folder(files, lambda _: np.array([[0.5, 0.5]]))
