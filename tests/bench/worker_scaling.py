"""Worker scaling on this machine, and worker memory over a bare ONNX Runtime process.

Three deployments an operator could choose on a 2-core machine, each a full stack (API,
Celery worker, beat) started once, warmed up, then measured for the rounds:

- ``1x2``: one worker process, ONNX Runtime with 2 intra-op threads (one per core);
- ``1x1``: one worker process, 1 thread;
- ``2x1``: two worker processes (prefork), 1 thread each.

Figures: scaling = 2x1 / 1x1 end-to-end images/s (aim >= 1.8); processes vs threads =
2x1 / 1x2. Every round also measures raw ONNX Runtime in the same shape (one session with
that many threads, or one 1-thread session per process side by side), so each deployment
has its own end to end / raw. Memory: the steady-state ``VmRSS`` of the processes that hold
the model, after the rounds, over a bare process (only ``onnxruntime`` and ``numpy``) that
opens the same CAM-ready file with the same thread count and runs the same three outputs
on a 240 x 240 input (aim <= 1.3).
Run standalone: ``PYTHONPATH=.:tests .venv/bin/python tests/bench/worker_scaling.py --rounds 1 --images 4``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from end_to_end import Stack, push_and_wait, running_stack
from helpers import services_available
from model_latency import raw_parallel_throughput, raw_throughput
from process_usage import children, process_tree_memory
from study_throughput import SERIES_ENV

from models.cam_ready import ACTIVATIONS, GRADIENTS, PROBABILITIES, TARGET_CLASS, TUMOUR_TARGET
from models.inference import Classifier
from models.registry import get_manifest
from service.settings import Settings

SCALING_AIM = 1.8
E2E_OVER_RAW_AIM = 0.95
RSS_AIM = 1.3
BARE_RUNS = 20


@dataclass(frozen=True)
class Deployment:
    processes: int
    threads: int  # ONNX Runtime intra-op threads per process

    @property
    def name(self) -> str:
        return f"{self.processes}x{self.threads}"


DEPLOYMENTS = (Deployment(1, 2), Deployment(1, 1), Deployment(2, 1))

BARE_SCRIPT = """
import json, sys
import numpy as np
import onnxruntime as ort
path, threads, runs, input_name, layout, size, channels, outputs, target_name, target = sys.argv[1:]
options = ort.SessionOptions()
options.intra_op_num_threads = int(threads)
session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
side = int(size)
shape = (1, side, side, int(channels)) if layout == "NHWC" else (1, int(channels), side, side)
feeds = {input_name: np.random.default_rng(0).random(shape, dtype=np.float32),
         target_name: np.array([int(target)], dtype=np.int64)}
for _ in range(int(runs)):
    session.run(outputs.split(","), feeds)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({"rss_kib": int(status["VmRSS"].split()[0]), "peak_kib": int(status["VmHWM"].split()[0])}))
"""


def bare_rss_mib(classifier: Classifier, threads: int, runs: int = BARE_RUNS) -> float:
    """``VmRSS`` (MiB) of a fresh process that only loads the CAM-ready model and runs it ``runs`` times."""
    manifest = classifier.manifest
    height, width = manifest.input_size
    if height != width:
        raise ValueError(f"bare process expects a square input, manifest says {manifest.input_size}")
    argv = [
        str(classifier.cam_ready_path), str(threads), str(runs), manifest.input_name, manifest.input_layout,
        str(height), str(manifest.channels), f"{PROBABILITIES},{ACTIVATIONS},{GRADIENTS}", TARGET_CLASS,
        str(TUMOUR_TARGET),
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", BARE_SCRIPT, *argv], capture_output=True, text=True, check=True)
    return round(float(json.loads(done.stdout)["rss_kib"]) / 1024, 1)


def model_rss_mib(stack: Stack) -> list[float]:
    """Resident MiB of the processes that hold the model: the prefork children, or the solo main process."""
    tree = process_tree_memory(stack.worker_pid)
    holders = [p for p in tree if p.role == "child"] if children(stack.worker_pid) else tree
    return [p.rss_mib for p in holders]


def raw_same_shape(streams: list[Classifier], images: int) -> float:
    """Raw ONNX Runtime images/s in the deployment's shape: one session, or one per process side by side."""
    if len(streams) == 1:
        return raw_throughput(streams[0], images)
    return raw_parallel_throughput(streams, images)


def measure(deployment: Deployment, rounds: int, images: int, cache: Path, production: bool) -> dict[str, Any]:
    """One deployment: a stack started once, warmed up, then ``rounds`` of raw + end-to-end."""
    manifest = get_manifest(Settings.model_fields["model_name"].default)
    streams = [
        Classifier(manifest, cache_dir=cache, intra_op_threads=deployment.threads) for _ in range(deployment.processes)
    ]
    env = {**SERIES_ENV, "SIGHTLINE_ONNX_THREADS": str(deployment.threads)}
    raw, e2e = [], []
    with (
        tempfile.TemporaryDirectory(prefix=f"sightline-scaling-{deployment.name}-") as tmp,
        running_stack(Path(tmp), cache, production, deployment.processes, extra_env=env, beat=True) as stack,
    ):
        push_and_wait(stack, 2, seed=999)  # warm-up: the worker loads the model
        for round_index in range(rounds):
            raw.append(raw_same_shape(streams, images))
            e2e.append(push_and_wait(stack, images, seed=500 + round_index))
        rss = model_rss_mib(stack)
        backend = stack.backend
    return {
        "processes": deployment.processes,
        "onnx_threads": deployment.threads,
        "backend": backend,
        "raw_images_per_s": [round(x, 2) for x in raw],
        "e2e_images_per_s": [round(x, 2) for x in e2e],
        "e2e_median": round(statistics.median(e2e), 3),
        "e2e_over_raw": round(statistics.median(e2e) / statistics.median(raw), 3),
        "model_process_rss_mib": rss,
        "bare_rss_mib": bare_rss_mib(streams[0], deployment.threads),
    }


def run(rounds: int, cache: Path, production: bool, *, images: int = 40) -> dict[str, Any]:
    """Every deployment in turn (one stack at a time: they would share the broker queue)."""
    runs = {d.name: measure(d, rounds, images, cache, production) for d in DEPLOYMENTS}
    rate = {name: figures["e2e_median"] for name, figures in runs.items()}
    two = runs["2x1"]
    return {
        "rounds": rounds,
        "images_per_round": images,
        "deployments": runs,
        "scaling_2x1_over_1x1": round(rate["2x1"] / rate["1x1"], 3),
        "processes_over_threads_2x1_over_1x2": round(rate["2x1"] / rate["1x2"], 3),
        "worker_rss_mib": max(two["model_process_rss_mib"]),
        "bare_rss_mib": two["bare_rss_mib"],
        "worker_rss_over_bare": round(max(two["model_process_rss_mib"]) / two["bare_rss_mib"], 3),
    }


def _row(name: str, d: dict[str, Any]) -> str:
    return (
        f"| {name} | {d['processes']} × {d['onnx_threads']} | {d['raw_images_per_s']} | {d['e2e_images_per_s']} "
        f"| {d['e2e_median']} | {d['e2e_over_raw']} | {d['model_process_rss_mib']} | {d['bare_rss_mib']} |"
    )


def section(figures: dict[str, Any] | None) -> str:
    """Markdown: one row per deployment, then the three ratios beside their aims."""
    if figures is None:
        return "## Worker scaling and memory\n\nNot measured.\n"
    rows = "\n".join(_row(name, d) for name, d in figures["deployments"].items())
    e2e = figures.get("e2e_over_raw", "not measured")
    return f"""## Worker scaling and memory

Three deployments, each a stack (API, Celery worker, beat; {_backend(figures)}) started once,
warmed up with 2 uploads, then {figures["rounds"]} round(s) of {figures["images_per_round"]}
uploads; raw = plain ONNX Runtime in the same shape (one session with that many threads, or
one 1-thread session per process side by side), measured in the same rounds. Resident memory
= `VmRSS` of the processes holding the model (prefork children, or the solo worker) after
the rounds; bare = a fresh process with only `onnxruntime` and `numpy` running the same
CAM-ready model (probabilities + activations + gradients) {BARE_RUNS} times on a 240 × 240
input with the same thread count.

| deployment | processes × ONNX threads | raw (images/s) | end to end (images/s) | end to end, median | end to end / raw | worker resident (MiB) | bare ORT resident (MiB) |
|---|---|---|---|---|---|---|---|
{rows}

| figure | value | aim |
|---|---|---|
| **scaling: 2 × 1 / 1 × 1 end-to-end images/s** | **{figures["scaling_2x1_over_1x1"]}** | ≥ {SCALING_AIM} |
| processes vs threads: 2 × 1 / 1 × 2 end-to-end images/s | {figures["processes_over_threads_2x1_over_1x2"]} | |
| **end to end / raw ONNX Runtime** (`e2e_over_raw`, headline table) | **{e2e}** | ≥ {E2E_OVER_RAW_AIM} |
| worker pool child resident, 2 × 1 (largest child, MiB) | {figures["worker_rss_mib"]} | |
| bare ONNX Runtime process, same model, 1 thread (MiB) | {figures["bare_rss_mib"]} | |
| **worker resident / bare ONNX Runtime** | **{figures["worker_rss_over_bare"]}** | ≤ {RSS_AIM} |
"""  # noqa: E501


def _backend(figures: dict[str, Any]) -> str:
    return str(next(iter(figures["deployments"].values()))["backend"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--embedded", action="store_true", help="use SQLite even when PostgreSQL/Redis are up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sightline-scaling-") as tmp:
        production = services_available() and not args.embedded
        figures = run(args.rounds, Path(tmp) / "model-cache", production, images=args.images)
    print(json.dumps(figures, indent=2))
    print(section(figures))


if __name__ == "__main__":
    main()
