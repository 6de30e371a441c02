"""Explanation latency per method on the default model, in one run, against two baselines.

1. every method's ``explain()`` (less preprocessing) over plain ONNX Runtime inference of
   the original model (same picture, same threads);
2. all tumour classes explained in one call (``Classifier.explain_classes``) over plain;
3. Sightline's Grad-CAM over pytorch-grad-cam's GradCAM on the same weights in PyTorch
   (the ONNX model converted by onnx2torch, its final Softmax dropped so both
   differentiate the logit), and Sightline's batched Score-CAM over pytorch-grad-cam's
   ScoreCAM at the same batch size.

Each call is timed right after a plain inference, and its ratio to that plain run is kept;
the figures are medians over rounds (methods rotate order each round), so the drift of a
shared virtual machine cancels out of the ratios.
Score-CAM runs one forward pass per CAM-layer channel (512 for VGG16), so it gets
``score_rounds`` rounds only. Run alone: ``python tests/bench/explanation_methods.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import numpy as np

from models.errors import UnknownCamMethod
from models.inference import Classifier
from models.manifest import CamMethodName, resolve_model_path
from models.preprocess import preprocess
from models.registry import default_manifest_path, load_manifest

FORWARD_ONLY = ("scorecam", "ablationcam")
SCORE_BATCH = 32


def _ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000.0


def _explain_ms(classifier: Classifier, image: np.ndarray, method: str) -> float:
    """explain() wall time less its preprocessing: the model run(s) and the map."""
    started = time.perf_counter()
    result = classifier.explain(image, method)
    return (time.perf_counter() - started) * 1000.0 - result.timings_ms["preprocess"]


def _available(classifier: Classifier, image: np.ndarray) -> list[str]:
    methods = []
    for method in get_args(CamMethodName):
        try:
            classifier.explain(image, method)
        except UnknownCamMethod:
            continue
        methods.append(method)
    return methods


class TorchReference:
    """The default model's own weights in PyTorch, explained by pytorch-grad-cam."""

    def __init__(self, classifier: Classifier):
        import onnx
        import torch
        from reference.gradcam import onnx2torch

        torch.set_num_threads(os.cpu_count() or 1)
        manifest = classifier.manifest
        graph = onnx.load(str(resolve_model_path(manifest)))
        softmax = next(node for node in graph.graph.node if node.output[0] == manifest.output_name)
        assert softmax.op_type == "Softmax", "the default model ends in a Softmax"
        logits_model = onnx.ModelProto()
        logits_model.CopyFrom(graph)
        logits_model.graph.node.remove(next(n for n in logits_model.graph.node if n.name == softmax.name))
        logits_model.graph.output[0].name = softmax.input[0]
        self.model = onnx2torch.convert(logits_model).eval()
        producer = next(node for node in graph.graph.node if manifest.cam_layer in node.output)
        self.layer = dict(self.model.named_modules())[producer.name]  # onnx2torch names modules after nodes
        self.torch = torch

    def cam(self, method: str, batch: np.ndarray, target: int) -> float:
        from reference.gradcam import pytorch_grad_cam

        target_class = pytorch_grad_cam.utils.model_targets.ClassifierOutputTarget
        cls = {"gradcam": pytorch_grad_cam.GradCAM, "scorecam": pytorch_grad_cam.ScoreCAM}[method]
        tensor = self.torch.from_numpy(batch)
        with cls(model=self.model, target_layers=[self.layer]) as cam:
            if method == "scorecam":
                cam.batch_size = SCORE_BATCH
            return _ms(lambda: cam(input_tensor=tensor, targets=[target_class(target)]))


def run(rounds: int = 9, score_rounds: int = 1) -> dict[str, Any]:
    """Every ratio is the median over rounds of (call ÷ plain inference measured just before
    it), so the machine's drift between rounds cancels; methods rotate order every round."""
    from model_latency import demo_image

    with tempfile.TemporaryDirectory(prefix="sightline-explain-bench-") as tmp:
        classifier = Classifier(load_manifest(default_manifest_path()), cache_dir=Path(tmp))
        image = demo_image()
        batch = preprocess(image, classifier.manifest)
        methods = _available(classifier, image)
        tumour = [classifier.manifest.labels.index(label) for label in classifier.manifest.tumour_labels]
        target = tumour[int(np.argmax(classifier.predict_plain(batch)[0][tumour]))]
        reference = TorchReference(classifier)
        classifier.explain_classes(image, "gradcam", tumour)  # warm-up: builds the all-classes session
        plain: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in (*methods, ALL_CLASSES, PGC_GRADCAM)}
        ratios: dict[str, list[float]] = {name: [] for name in (*methods, ALL_CLASSES)}
        calls: dict[str, Callable[[], float]] = {
            **{method: (lambda m=method: _explain_ms(classifier, image, m)) for method in methods},
            ALL_CLASSES: lambda: _ms(lambda: classifier.explain_classes(image, "gradcam", tumour)),
        }
        names = list(calls)
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                if name in FORWARD_ONLY and round_index >= score_rounds:
                    continue
                before = _ms(lambda: classifier.predict_plain(batch))
                took = calls[name]()
                plain.append(before)
                times[name].append(took)
                ratios[name].append(took / before)
            # PyTorch last in the round: its OpenMP threads keep spinning after a call and would
            # slow whichever ONNX Runtime run came next.
            times[PGC_GRADCAM].append(reference.cam("gradcam", batch, target))
        score_pgc = [reference.cam("scorecam", batch, target) for _ in range(score_rounds)]
    return _figures(rounds, plain, times, ratios, score_pgc)


ALL_CLASSES = "all tumour classes (gradcam)"
PGC_GRADCAM = "pytorch-grad-cam GradCAM"


def _figures(
    rounds: int,
    plain: list[float],
    times: dict[str, list[float]],
    ratios: dict[str, list[float]],
    score_pgc: list[float],
) -> dict[str, Any]:
    median = statistics.median
    methods = {name: values for name, values in times.items() if values and name not in (ALL_CLASSES, PGC_GRADCAM)}
    figures: dict[str, Any] = {
        "rounds": rounds,
        "plain_ms": round(median(plain), 1),
        "methods": {
            name: {"ms": round(median(values), 1), "over_plain": round(median(ratios[name]), 3)}
            for name, values in methods.items()
        },
        "all_tumour_classes_ms": round(median(times[ALL_CLASSES]), 1),
        "all_tumour_classes_over_plain": round(median(ratios[ALL_CLASSES]), 3),
        "pgc_gradcam_ms": round(median(times[PGC_GRADCAM]), 1),
        "gradcam_over_pgc": round(median(times["gradcam"]) / median(times[PGC_GRADCAM]), 3),
        "score_batch": SCORE_BATCH,
    }
    if score_pgc and "scorecam" in methods:
        figures["pgc_scorecam_ms"] = round(median(score_pgc), 1)
        figures["scorecam_over_pgc"] = round(median(times["scorecam"]) / median(score_pgc), 3)
    return figures


def section(figures: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {method} | {row['ms']} ms | {row['over_plain']} |" for method, row in figures["methods"].items()
    )
    lines = [
        "## Explanation methods on the default model",
        "",
        f"Medians of {figures['rounds']} rounds of (call ÷ the plain inference timed just before it); "
        f"Score-CAM and Ablation-CAM: fewer rounds, see the module. Plain ONNX Runtime inference "
        f"{figures['plain_ms']} ms.",
        "",
        "| method | latency | ÷ plain inference |",
        "|---|---|---|",
        rows,
        "",
        "| ratio | measured | aim |",
        "|---|---|---|",
        f"| Grad-CAM ÷ plain | {figures['methods']['gradcam']['over_plain']} | ≤ 1.1 |",
    ]
    lines.append(f"| all tumour classes, one run ÷ plain | {figures['all_tumour_classes_over_plain']} | ≤ 1.2 |")
    lines.append(
        f"| Sightline Grad-CAM ÷ pytorch-grad-cam GradCAM (same weights, {figures['pgc_gradcam_ms']} ms) "
        f"| {figures['gradcam_over_pgc']} | |"
    )
    if "scorecam_over_pgc" in figures:
        lines.append(
            f"| Sightline Score-CAM ÷ pytorch-grad-cam ScoreCAM (batch {figures['score_batch']}, "
            f"{figures['pgc_scorecam_ms']} ms) | {figures['scorecam_over_pgc']} | ≤ 1 |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    result = run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 9)
    print(json.dumps(result, indent=2))
    print(section(result))
