"""One training recipe for every seed architecture: folder in, ONNX file and manifest out.

CPU, AdamW (Loshchilov & Hutter 2019), cross-entropy, random horizontal flips (brain
anatomy is roughly left-right symmetric, so a flipped slice keeps its label). The epoch
with the best validation accuracy (then the lower validation loss) is kept and exported;
the temperature (Guo et al. 2017) is fitted by ``models.calibration`` on the exported
model's own validation logits, so calibration describes the file that ships. A fit that
ends on a bound of the search is no estimate (see ``usable_temperature``) and is not written.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.calibration import TEMPERATURE_BOUNDS, fit_temperature
from models.manifest import ModelManifest
from training.architectures import CamClassifier, ExportedModel, build, export_onnx
from training.data import (
    DEFAULT_VALIDATION_FRACTION,
    LabelledFile,
    TensorSet,
    class_files,
    folder_labels,
    load_tensors,
    stratified_split,
)
from training.manifest_writer import (
    InputSpec,
    LabelSpec,
    build_manifest,
    label_spec,
    preprocessing_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)

EVALUATION_CHUNK = 256  # pictures per forward pass when evaluating, to bound activation memory
TEMPERATURE_DECIMALS = 4  # as `sightline models calibrate`: the fit's statistical error is far larger


@dataclass(frozen=True)
class EpochStats:
    """One epoch: running loss/accuracy over its (augmented) batches, then validation in eval mode."""

    epoch: int
    train_loss: float
    train_accuracy: float
    validation_loss: float
    validation_accuracy: float


@dataclass(frozen=True)
class TrainingSummary:
    """What a run produced and how well the kept epoch did."""

    arch: str
    manifest_path: Path
    onnx_path: Path
    labels: tuple[str, ...]
    history: tuple[EpochStats, ...]  # epoch 0 is the untrained model
    best_epoch: int
    validation_accuracy: float  # of the kept epoch, in torch
    onnx_validation_accuracy: float  # of the exported file on the same tensors
    temperature: float  # written to the manifest
    fitted_temperature: float  # what the fit on the validation logits found
    train_count: int
    validation_count: int
    skipped_files: tuple[Path, ...]
    seconds: float


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimiser steps in all (smoke runs)


def train(
    arch: str,
    data_dir: Path,
    out_dir: Path,
    *,
    hyper: Hyperparameters = Hyperparameters(),
    width: int = 16,
    input_size: int = 64,
    channels: int = 1,
    labels: Sequence[str] = (),
    tumour_labels: Sequence[str] = (),
    no_tumour_label: str | None = "notumor",
    name: str | None = None,
    version: str = "0.1.0",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
) -> TrainingSummary:
    """Train ``arch`` on ``data_dir/<class>/*``; write ``<name>.onnx`` and ``<name>.json`` into ``out_dir``.

    ``labels`` default to the class sub-folder names (sorted); every label but
    ``no_tumour_label`` is a tumour unless ``tumour_labels`` is given. Everything that can be
    refused (architecture, names, labels, folder) is checked before training starts.
    """
    started = time.perf_counter()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    name = name or f"sightline-{arch.replace('_', '-')}"
    spec = InputSpec(input_size=input_size, channels=1 if channels == 1 else 3)
    labelling = label_spec(list(labels) or folder_labels(data_dir), tumour_labels, no_tumour_label)
    files = class_files(data_dir, labelling.labels)  # refused here: before any time is spent
    prep = preprocessing_manifest(spec, labelling, name=name, version=version)
    torch.manual_seed(hyper.seed)
    model = build(arch, num_classes=len(labelling.labels), in_channels=channels, width=width, input_size=input_size)
    data = load_split(files, prep, fraction=validation_fraction, seed=hyper.seed)
    history, best = fit(model, data.train, data.validation, hyper)
    shipped = ship(model, spec, labelling, data.validation, out_dir / f"{name}.json", version=version)
    return TrainingSummary(
        arch=arch,
        manifest_path=shipped.manifest_path,
        onnx_path=shipped.onnx_path,
        labels=labelling.labels,
        history=tuple(history),
        best_epoch=best.epoch,
        validation_accuracy=best.validation_accuracy,
        onnx_validation_accuracy=shipped.validation_accuracy,
        temperature=shipped.temperature,
        fitted_temperature=shipped.fitted_temperature,
        train_count=len(data.train),
        validation_count=len(data.validation),
        skipped_files=data.skipped,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class PreparedData:
    train: TensorSet
    validation: TensorSet
    skipped: tuple[Path, ...]  # files that could not be decoded


def load_split(files: Sequence[LabelledFile], prep: ModelManifest, *, fraction: float, seed: int) -> PreparedData:
    """Split by file, then decode and preprocess both sides with the preprocessing manifest."""
    split = stratified_split(files, validation_fraction=fraction, seed=seed)
    train_set, skipped_train = load_tensors(split.train, prep)
    validation_set, skipped_validation = load_tensors(split.validation, prep)
    logger.info("%d pictures to train on, %d to validate on", len(train_set), len(validation_set))
    return PreparedData(train_set, validation_set, (*skipped_train, *skipped_validation))


@dataclass(frozen=True)
class ShippedModel:
    manifest_path: Path
    onnx_path: Path
    temperature: float
    fitted_temperature: float
    validation_accuracy: float  # of the exported file


def ship(
    model: CamClassifier,
    spec: InputSpec,
    labelling: LabelSpec,
    validation_set: TensorSet,
    manifest_path: Path,
    *,
    version: str,
) -> ShippedModel:
    """Export ONNX beside the manifest, fit the temperature on the file's own validation logits, write the manifest."""
    name, out_dir = manifest_path.stem, manifest_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = export_onnx(model, out_dir / f"{name}.onnx", input_size=spec.input_size, in_channels=spec.channels)
    logits = onnx_logits(exported, validation_set.inputs)
    fitted = round(fit_temperature(softmax(logits), validation_set.labels), TEMPERATURE_DECIMALS)
    temperature = usable_temperature(fitted)
    manifest = build_manifest(
        name=name,
        version=version,
        spec=spec,
        labels=labelling,
        exported=exported,
        manifest_dir=out_dir,
        temperature=temperature,
    )
    write_manifest(manifest, manifest_path)
    return ShippedModel(manifest_path, exported.path, temperature, fitted, accuracy(logits, validation_set.labels))


def usable_temperature(fitted: float) -> float:
    """``fitted``, unless it lies on a bound of ``TEMPERATURE_BOUNDS``: then 1.0 (no scaling).

    The lower bound means the validation set is perfectly separated (the likelihood keeps
    rising as T -> 0; common on small sets), the upper one a model that has not learned.
    Neither is an estimate, and writing 0.05 would make every later mistake near-certain.
    """
    if any(math.isclose(fitted, bound, rel_tol=1e-3) for bound in TEMPERATURE_BOUNDS):
        logger.warning("temperature fit ended on its bound (T=%g): no estimate, writing 1.0", fitted)
        return 1.0
    return fitted


def fit(
    model: CamClassifier, train_set: TensorSet, validation_set: TensorSet, hyper: Hyperparameters
) -> tuple[list[EpochStats], EpochStats]:
    """Train in place; leaves ``model`` holding the weights of the best epoch (epoch 0 included)."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=hyper.lr, weight_decay=hyper.weight_decay)
    generator = torch.Generator().manual_seed(hyper.seed)
    inputs, targets = torch.from_numpy(train_set.inputs), torch.from_numpy(train_set.labels)
    untrained = evaluate(model, train_set)
    history = [EpochStats(0, *untrained, *evaluate(model, validation_set))]
    best, best_state = history[0], copy.deepcopy(model.state_dict())
    steps_left = math.inf if hyper.max_steps is None else hyper.max_steps
    for epoch in range(1, hyper.epochs + 1):
        if steps_left <= 0:
            break
        loss, correct, steps = train_epoch(model, optimiser, inputs, targets, hyper.batch_size, generator, steps_left)
        steps_left -= steps
        stats = EpochStats(epoch, loss, correct, *evaluate(model, validation_set))
        logger.info(
            "epoch %d: train loss %.4f accuracy %.3f, validation loss %.4f accuracy %.3f",
            *(stats.epoch, stats.train_loss, stats.train_accuracy, stats.validation_loss, stats.validation_accuracy),
        )
        history.append(stats)
        if (stats.validation_accuracy, -stats.validation_loss) > (best.validation_accuracy, -best.validation_loss):
            best, best_state = stats, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    logger.info("kept epoch %d (validation accuracy %.3f)", best.epoch, best.validation_accuracy)
    return history, best


def train_epoch(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    max_steps: float,
) -> tuple[float, float, int]:
    """One pass over shuffled batches of flipped-at-random pictures: (mean loss, accuracy, steps)."""
    model.train()
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    for batch in batches(len(targets), batch_size, generator):
        if steps >= max_steps:
            break
        pictures = random_flip(inputs[batch], generator)
        logits = model(pictures)
        loss = nn.functional.cross_entropy(logits, targets[batch])
        optimiser.zero_grad()
        torch.autograd.backward(loss)
        optimiser.step()
        loss_sum += loss.item() * len(batch)
        correct += int((logits.argmax(dim=1) == targets[batch]).sum())
        seen, steps = seen + len(batch), steps + 1
    return loss_sum / seen, correct / seen, steps


def batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled partition into ``count // batch_size`` batches (at least one): the remainder is
    spread over them, so no batch holds a single picture, which batch norm cannot train on."""
    order = torch.randperm(count, generator=generator)
    return list(torch.tensor_split(order, max(1, count // batch_size)))


def random_flip(pictures: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each picture mirrored left-right with probability 1/2."""
    flip = torch.rand(len(pictures), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], pictures.flip(-1), pictures)


def evaluate(model: nn.Module, data: TensorSet) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode (batch norm running statistics, no dropout)."""
    model.eval()
    with torch.no_grad():
        chunks = torch.split(torch.from_numpy(data.inputs), EVALUATION_CHUNK)
        logits = torch.cat([model(chunk) for chunk in chunks])
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(data.labels)))
    return loss, accuracy(logits.numpy(), data.labels)


def onnx_logits(exported: ExportedModel, inputs: np.ndarray) -> np.ndarray:
    """The exported file's logits, run by ONNX Runtime as Sightline runs it."""
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([exported.output_name], {exported.input_name: inputs})
    return np.asarray(logits, dtype=np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))
