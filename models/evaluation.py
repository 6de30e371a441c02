"""How well a classifier does on a labelled folder: accuracy, per-class precision, recall and
F1, the confusion matrix, one-vs-rest ROC-AUC and calibration (NLL, ECE) before and after
temperature scaling. Pure numpy; the model enters only through ``predict_folder``'s callable.

Every metric except the "before" calibration numbers is computed on the temperature-scaled
probabilities, the numbers Sightline ships. Scaling never changes a row's argmax, so
accuracy, the confusion matrix, precision, recall and F1 do not depend on T; a one-vs-rest
AUC can move slightly with T when there are more than two classes.
"""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.calibration import (
    ReliabilityBin,
    apply_temperature,
    calibration_error,
    check_predictions,
    negative_log_likelihood,
    reliability_bins,
)
from models.errors import ImageDecodeError, InvalidImageArray, ModelContractError, ModelLibraryError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm"})
# Folder names of the public brain-MRI sets (Kaggle "Brain Tumor MRI Dataset" and its sources).
FOLDER_ALIASES = {
    "no_tumor": "notumor",
    "no_tumour": "notumor",
    "notumour": "notumor",
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "pituitary_tumor": "pituitary",
}


class LabelledFolderError(ModelLibraryError):
    """A labelled folder that cannot be evaluated: not a folder, an unknown class, nothing readable."""

    code = "labelled_folder"


def labelled_files(folder: Path, labels: Sequence[str]) -> list[tuple[Path, int]]:
    """(file, label index) for every image under ``folder/<class>/``, sorted by folder then path.

    A class folder is named like its label (case-insensitive) or by one of ``FOLDER_ALIASES``
    whose label exists. Files are .jpg/.jpeg/.png/.dcm, or DICOM without an extension (or
    with a numeric one, as UID-named files have), searched recursively. Hidden entries and
    plain files beside the class folders (README, LICENSE) are ignored; any other
    sub-folder is an error that names it.
    """
    if not folder.is_dir():
        raise LabelledFolderError(f"{folder} is not a folder")
    by_name = {label.lower(): index for index, label in enumerate(labels)}
    by_name |= {alias: by_name[label] for alias, label in FOLDER_ALIASES.items() if label in by_name}
    files: list[tuple[Path, int]] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        index = by_name.get(class_dir.name.lower())
        if index is None:
            raise LabelledFolderError(
                f"sub-folder {class_dir.name!r} of {folder} names no label; expected one of {sorted(by_name)}"
            )
        files.extend((path, index) for path in sorted(class_dir.rglob("*")) if _is_image_file(path, class_dir))
    if not files:
        raise LabelledFolderError(f"{folder} holds no image files in class sub-folders named like {list(labels)}")
    return files


def _is_image_file(path: Path, class_dir: Path) -> bool:
    if not path.is_file() or any(part.startswith(".") for part in path.relative_to(class_dir).parts):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix == "" or suffix[1:].isdigit()


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be scored: its index in the file list, its path and why."""

    index: int
    path: str
    reason: str


@dataclass(frozen=True)
class FolderPredictions:
    """Raw probabilities (N, K) and label indices (N,) of the readable files, plus what was skipped."""

    probabilities: FloatArray
    labels: IntArray
    paths: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]


def predict_folder(
    files: Sequence[tuple[Path, int]], predict: Callable[[bytes], npt.NDArray[Any]], *, root: Path | None = None
) -> FolderPredictions:
    """Run ``predict`` (file bytes -> K probabilities) on every file; paths are shown relative to ``root``.

    A file that cannot be read or decoded is listed in ``skipped`` and the run goes on. A
    prediction of the wrong shape is a broken model, not a bad file: ``ModelContractError``.
    """
    rows: list[FloatArray] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[SkippedFile] = []
    for index, (path, label) in enumerate(files):
        shown = str(path.relative_to(root)) if root is not None else str(path)
        try:
            row = np.asarray(predict(path.read_bytes()), dtype=np.float64)
        except (OSError, ImageDecodeError, InvalidImageArray) as exc:
            logger.warning("skipped unreadable file", extra={"index": index, "error": type(exc).__name__})
            skipped.append(SkippedFile(index=index, path=shown, reason=f"{type(exc).__name__}: {exc}"))
            continue
        if row.ndim != 1 or (rows and row.shape != rows[0].shape):
            expected = rows[0].shape if rows else "(K,)"
            raise ModelContractError(f"prediction for {shown} has shape {row.shape}, expected {expected}")
        rows.append(row)
        labels.append(label)
        paths.append(shown)
    probabilities = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float64)
    return FolderPredictions(probabilities, np.asarray(labels, dtype=np.int64), tuple(paths), tuple(skipped))


def confusion_matrix(truth: npt.ArrayLike, predicted: npt.ArrayLike, classes: int) -> IntArray:
    """Counts with rows = true class, columns = predicted class, both in label order."""
    t, p = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes).astype(np.int64)


def roc_auc(scores: npt.ArrayLike, positives: npt.ArrayLike) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic (Hanley & McNeil 1982):
    P(score of a positive > score of a negative), ties counting one half (midranks).
    None when there is no positive or no negative."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    is_positive = np.asarray(positives, dtype=bool).ravel()
    if values.shape != is_positive.shape or not np.isfinite(values).all():
        raise ValueError("scores must be finite and as many as positives")
    n_pos = int(is_positive.sum())
    n_neg = values.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    midranks = np.cumsum(counts) - (counts - 1) / 2.0
    u_statistic = midranks[inverse][is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


@dataclass(frozen=True)
class ClassMetrics:
    """One label: precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN), one-vs-rest AUC.
    Each is None where its denominator is 0 (never predicted, no support, no positive or negative)."""

    label: str
    support: int
    precision: float | None
    recall: float | None
    f1: float | None
    roc_auc: float | None


@dataclass(frozen=True)
class EvaluationReport:
    """Everything ``write_report`` writes. Macro averages are over the classes where the metric is defined."""

    model: str | None
    labels: tuple[str, ...]
    count: int
    temperature: float
    accuracy: float
    confusion: tuple[tuple[int, ...], ...]
    classes: tuple[ClassMetrics, ...]
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    macro_roc_auc: float | None
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reliability_before: tuple[ReliabilityBin, ...]
    reliability_after: tuple[ReliabilityBin, ...]
    skipped: tuple[SkippedFile, ...]

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (lists, no NaN): exactly what evaluation.json holds."""
        loaded: dict[str, Any] = json.loads(json.dumps(asdict(self), allow_nan=False))
        return loaded


def evaluate(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    label_names: Sequence[str],
    temperature: float,
    *,
    model: str | None = None,
    skipped: Sequence[SkippedFile] = (),
    bins: int = 15,
) -> EvaluationReport:
    """Metrics of raw probabilities (N, K) against label indices, calibrated with ``temperature``."""
    raw, truth = check_predictions(probabilities, labels)
    if len(label_names) != raw.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {raw.shape[1]} probability columns")
    calibrated = apply_temperature(raw, temperature)
    classes = len(label_names)
    confusion = confusion_matrix(truth, calibrated.argmax(axis=1), classes)
    per_class = tuple(
        _class_metrics(name, k, confusion, calibrated[:, k], truth == k) for k, name in enumerate(label_names)
    )
    before, after = reliability_bins(raw, truth, bins), reliability_bins(calibrated, truth, bins)
    return EvaluationReport(
        model=model,
        labels=tuple(label_names),
        count=int(truth.size),
        temperature=float(temperature),
        accuracy=float(np.trace(confusion) / truth.size),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        classes=per_class,
        macro_precision=_mean([c.precision for c in per_class]),
        macro_recall=_mean([c.recall for c in per_class]),
        macro_f1=_mean([c.f1 for c in per_class]),
        macro_roc_auc=_mean([c.roc_auc for c in per_class]),
        nll_before=negative_log_likelihood(raw, truth),
        nll_after=negative_log_likelihood(raw, truth, temperature),
        ece_before=calibration_error(before),
        ece_after=calibration_error(after),
        reliability_before=before,
        reliability_after=after,
        skipped=tuple(skipped),
    )


def _class_metrics(
    name: str, k: int, confusion: IntArray, scores: FloatArray, positives: npt.NDArray[np.bool_]
) -> ClassMetrics:
    tp = int(confusion[k, k])
    fp = int(confusion[:, k].sum()) - tp
    fn = int(confusion[k, :].sum()) - tp
    return ClassMetrics(
        label=name,
        support=tp + fn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        roc_auc=roc_auc(scores, positives),
    )


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
