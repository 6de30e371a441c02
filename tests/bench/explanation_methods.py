"""Explanation latency per method on the default model, in one run, against two baselines.

1. every method's ``explain()`` (less preprocessing) over plain ONNX Runtime inference of
   the original model (same picture, same threads);
2. all tumour classes explained in one call (``Classifier.explain_classes``) over plain;
3. Sightline's Grad-CAM over pytorch-grad-cam's GradCAM on the same weights in PyTorch
   (the ONNX model converted by onnx2torch, its final Softmax dropped so both
   differentiate the logit), and Sightline's batched Score-CAM over pytorch-grad-cam's
   ScoreCAM at the same batch size.

Calls are interleaved round by round so machine noise hits all alike; figures are medians.
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


def run(rounds: int = 5, score_rounds: int = 1) -> dict[str, Any]:
    from model_latency import demo_image

    with tempfile.TemporaryDirectory(prefix="sightline-explain-bench-") as tmp:
        classifier = Classifier(load_manifest(default_manifest_path()), cache_dir=Path(tmp))
        image = demo_image()
        batch = preprocess(image, classifier.manifest)
        methods = _available(classifier, image)
        tumour = [classifier.manifest.labels.index(label) for label in classifier.manifest.tumour_labels]
        target = int(np.argmax(classifier.predict_plain(batch)[0][tumour]))
        target = tumour[target]
        reference = TorchReference(classifier)
        plain: list[float] = []
        per_method: dict[str, list[float]] = {method: [] for method in methods}
        all_classes: list[float] = []
        pgc: list[float] = []
        for round_index in range(rounds):
            plain.append(_ms(lambda: classifier.predict_plain(batch)))
            for method in methods:
                if method in FORWARD_ONLY and round_index >= score_rounds:
                    continue
                per_method[method].append(_explain_ms(classifier, image, method))
            if hasattr(classifier, "explain_classes"):
                all_classes.append(_ms(lambda: classifier.explain_classes(image, "gradcam", tumour)))
            pgc.append(reference.cam("gradcam", batch, target))
        score_pgc = [reference.cam("scorecam", batch, target) for _ in range(score_rounds)]
    plain_ms = statistics.median(plain)
    medians = {method: statistics.median(times) for method, times in per_method.items() if times}
    figures: dict[str, Any] = {
        "rounds": rounds,
        "plain_ms": round(plain_ms, 1),
        "methods": {m: {"ms": round(t, 1), "over_plain": round(t / plain_ms, 3)} for m, t in medians.items()},
        "pgc_gradcam_ms": round(statistics.median(pgc), 1),
        "gradcam_over_pgc": round(medians["gradcam"] / statistics.median(pgc), 3),
        "pgc_scorecam_ms": round(statistics.median(score_pgc), 1),
        "score_batch": SCORE_BATCH,
    }
    if "scorecam" in medians:
        figures["scorecam_over_pgc"] = round(medians["scorecam"] / statistics.median(score_pgc), 3)
    if all_classes:
        figures["all_tumour_classes_ms"] = round(statistics.median(all_classes), 1)
        figures["all_tumour_classes_over_plain"] = round(statistics.median(all_classes) / plain_ms, 3)
    return figures


def section(figures: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {method} | {row['ms']} ms | {row['over_plain']} |" for method, row in figures["methods"].items()
    )
    lines = [
        "## Explanation methods on the default model",
        "",
        f"Medians of {figures['rounds']} interleaved rounds (Score-CAM/Ablation-CAM: fewer, see the module), "
        f"plain ONNX Runtime inference {figures['plain_ms']} ms.",
        "",
        "| method | latency | ÷ plain inference |",
        "|---|---|---|",
        rows,
        "",
        "| ratio | measured | aim |",
        "|---|---|---|",
        f"| Grad-CAM ÷ plain | {figures['methods']['gradcam']['over_plain']} | ≤ 1.1 |",
    ]
    if "all_tumour_classes_over_plain" in figures:
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
    result = run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(json.dumps(result, indent=2))
    print(section(result))
