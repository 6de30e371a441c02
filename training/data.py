"""A labelled folder (one sub-folder per class) as model-input tensors, split for training.

Each file is decoded the way the worker decodes an upload (``models.analysis``: PNG/JPEG by
``models.raster``, DICOM frames by ``models.dicom_pixels`` with the manifest's input policy)
and turned into a tensor by ``models.preprocess.preprocess``: the model is trained on exactly
the tensors Sightline will feed it. The split is by file, stratified per class and seeded, so
frames of one DICOM object never sit on both sides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.decoded_image import DecodedImage
from models.dicom_pixels import decode_dicom
from models.dicom_read import read_dicom
from models.errors import ImageDecodeError, InvalidImageArray
from models.evaluation import FOLDER_ALIASES, LabelledFolderError, labelled_files
from models.manifest import ModelManifest
from models.preprocess import preprocess
from models.raster import decode_raster, sniff_kind

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
LabelledFile = tuple[Path, int]
DEFAULT_VALIDATION_FRACTION = 0.25


@dataclass(frozen=True)
class TensorSet:
    """Preprocessed inputs (N, C, H, W) and their label indices (N,)."""

    inputs: FloatArray
    labels: IntArray

    def __len__(self) -> int:
        return int(self.labels.size)


@dataclass(frozen=True)
class SplitFiles:
    """The labelled files of each side of the split."""

    train: list[LabelledFile]
    validation: list[LabelledFile]


def folder_labels(folder: Path) -> list[str]:
    """Labels from the class sub-folder names: lower case, public-set aliases mapped
    (``no_tumor`` -> ``notumor``), sorted; the order of the model's outputs."""
    if not folder.is_dir():
        raise LabelledFolderError(f"{folder} is not a folder")
    names = {p.name.lower() for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted({FOLDER_ALIASES.get(name, name) for name in names})


def class_files(folder: Path, labels: Sequence[str]) -> list[LabelledFile]:
    """Every image file with its label index; refuses a folder a classifier cannot learn from:
    no images, fewer than two classes, or a class with fewer than two files (one for each side)."""
    if len(labels) < 2:
        raise LabelledFolderError(f"{folder} needs at least two class sub-folders, found {list(labels)}")
    files = labelled_files(folder, labels)
    counts = np.bincount([index for _, index in files], minlength=len(labels))
    short = [f"{labels[i]} ({counts[i]})" for i in range(len(labels)) if counts[i] < 2]
    if short:
        raise LabelledFolderError(
            f"{folder}: every class needs at least two images (one to train on, one to validate); "
            f"too few in {', '.join(short)}"
        )
    return files


def stratified_split(files: Sequence[LabelledFile], *, validation_fraction: float, seed: int) -> SplitFiles:
    """Per class, a seeded shuffle; ``validation_fraction`` of it (at least one, never all) validates."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {validation_fraction}")
    rng = np.random.default_rng(seed)
    train: list[LabelledFile] = []
    validation: list[LabelledFile] = []
    for label in sorted({index for _, index in files}):
        members = [item for item in files if item[1] == label]
        order = rng.permutation(len(members))
        held = min(len(members) - 1, max(1, round(len(members) * validation_fraction)))
        validation.extend(members[i] for i in order[:held])
        train.extend(members[i] for i in order[held:])
    return SplitFiles(train, validation)


def model_pictures(data: bytes, manifest: ModelManifest) -> list[npt.NDArray[np.uint8]]:
    """The model-input picture of every frame, made as ``models.analysis.analyse_object`` makes it."""
    if sniff_kind(data) in ("png", "jpeg"):
        return [decode_raster(data).model_pixels]
    dataset = read_dicom(data)
    policy = manifest.input_policy
    first: DecodedImage = decode_dicom(dataset, index=0, input_policy=policy)
    rest = (decode_dicom(dataset, index=i, input_policy=policy) for i in range(1, first.frame_count))
    return [first.model_pixels, *(image.model_pixels for image in rest)]


def load_tensors(files: Sequence[LabelledFile], manifest: ModelManifest) -> tuple[TensorSet, list[Path]]:
    """Preprocessed tensors of every readable frame; files that cannot be decoded are logged and returned."""
    inputs: list[FloatArray] = []
    labels: list[int] = []
    skipped: list[Path] = []
    for path, label in files:
        try:
            pictures = model_pictures(path.read_bytes(), manifest)
        except (OSError, ImageDecodeError, InvalidImageArray) as exc:
            logger.warning("skipped unreadable training file %s: %s", path.name, type(exc).__name__)
            skipped.append(path)
            continue
        inputs.extend(preprocess(picture, manifest)[0] for picture in pictures)
        labels.extend([label] * len(pictures))
    if not inputs:
        raise LabelledFolderError(f"none of {len(files)} files could be decoded")
    return TensorSet(np.stack(inputs), np.asarray(labels, dtype=np.int64)), skipped
