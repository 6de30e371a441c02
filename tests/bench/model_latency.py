"""Latency of the default model: plain ONNX Runtime vs the CAM-ready graph (same image, same threads)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from models.inference import Classifier
from models.preprocess import preprocess
from models.synthetic import Lesion, synthetic_slice


@dataclass(frozen=True)
class LatencyFigures:
    plain_ms: float  # ORT run of the original model
    cam_ready_ms: float  # ORT run of the CAM-ready model (probabilities + activations + gradients)
    explain_ms: float  # the worker's whole explain(): preprocess + CAM-ready run + Grad-CAM map
    runs: int

    @property
    def ratio(self) -> float:
        return self.cam_ready_ms / self.plain_ms

    @property
    def explain_ratio(self) -> float:
        return self.explain_ms / self.plain_ms


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000.0


def demo_image() -> np.ndarray:
    pixels = synthetic_slice(256, lesion=Lesion(0.35, 0.4, 0.08), seed=7).astype(np.float32)
    return np.clip(pixels / 1600.0 * 255.0, 0, 255).astype(np.uint8)


def measure_latency(classifier: Classifier, runs: int = 15) -> LatencyFigures:
    """Interleave the three calls so that machine noise hits each of them alike; report medians."""
    image = demo_image()
    batch = preprocess(image, classifier.manifest)
    for _ in range(2):  # warm-up: first runs allocate arenas
        classifier.predict_plain(batch)
        classifier.explain(image)
    plain, cam_ready, explain = [], [], []
    for _ in range(runs):
        plain.append(_timed(lambda: classifier.predict_plain(batch)))
        result = classifier.explain(image)
        cam_ready.append(result.timings_ms["inference"])
        explain.append(sum(result.timings_ms.values()))
    return LatencyFigures(
        plain_ms=statistics.median(plain),
        cam_ready_ms=statistics.median(cam_ready),
        explain_ms=statistics.median(explain),
        runs=runs,
    )


def raw_throughput(classifier: Classifier, images: int = 20) -> float:
    """Images per second of the plain model, batch 1, back to back: the ceiling for the service."""
    batch = preprocess(demo_image(), classifier.manifest)
    classifier.predict_plain(batch)
    started = time.perf_counter()
    for _ in range(images):
        classifier.predict_plain(batch)
    return images / (time.perf_counter() - started)


def raw_parallel_throughput(classifiers: list[Classifier], images: int = 20) -> float:
    """Images per second with one single-threaded session per core, run side by side.

    ONNX Runtime releases the GIL, so threads here are real parallel streams: the ceiling a
    deployment with one worker process per core could reach.
    """
    batch = preprocess(demo_image(), classifiers[0].manifest)
    for classifier in classifiers:
        classifier.predict_plain(batch)
    per_stream = max(1, images // len(classifiers))

    def stream(classifier: Classifier) -> None:
        for _ in range(per_stream):
            classifier.predict_plain(batch)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(classifiers)) as pool:
        list(pool.map(stream, classifiers))
    return per_stream * len(classifiers) / (time.perf_counter() - started)
