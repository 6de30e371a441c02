"""``make bench``: measure, in one run, the ratios the README quotes, and write the report.

1. CAM-ready inference latency / plain inference latency (target <= 1.25);
2. end-to-end throughput through API + worker / raw ONNX Runtime throughput (target >= 0.8);
3. study-level time: a 150-slice series and a 3-series study, from the first upload to the
   study's triage score, over (slices x raw seconds per slice) (aim <= 1.15), and the
   resident memory of every worker process;
4. decode memory per megapixel (``decode_memory.py``), when that module is present;
5. ingest into Sightline vs Orthanc (``ingest_vs_orthanc.py``) and a 150-slice study's
   turnaround with Orthanc as the PACS (``turnaround_orthanc.py``);
6. worklist page latency over 10 k and 1 M studies (``worklist_scale.py``);
7. worker scaling (2 processes / 1, processes vs threads) and worker memory over a bare
   ONNX Runtime process (``worker_scaling.py``), with ``e2e_over_raw`` beside its aim;
8. every explanation method's latency over plain inference, all tumour classes in one run,
   and Grad-CAM / Score-CAM against pytorch-grad-cam on the same weights
   (``explanation_methods.py``).
Rounds interleave raw and end-to-end measurements so that machine noise hits both; the
figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import explanation_methods
import turnaround_orthanc
import worker_scaling
import worklist_scale
from end_to_end import push_and_wait, running_stack
from helpers import services_available
from model_latency import LatencyFigures, measure_latency, raw_parallel_throughput, raw_throughput
from process_usage import ProcessMemory, process_tree_memory
from report_sections import decode_section, memory_section, study_section
from study_throughput import QUIET_SECONDS, SERIES_ENV, SWEEP_SECONDS, StudyRun, push_study_and_wait, summarise

from models.inference import Classifier
from models.registry import get_manifest
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    args = _arguments()
    production = services_available() and not args.embedded
    with tempfile.TemporaryDirectory(prefix="sightline-bench-") as tmp:
        workdir = Path(tmp)
        cache = workdir / "model-cache"
        classifier = Classifier(get_manifest(Settings.model_fields["model_name"].default), cache_dir=cache)
        latency = measure_latency(classifier)
        manifest = classifier.manifest
        streams = [Classifier(manifest, cache_dir=cache, intra_op_threads=1) for _ in range(os.cpu_count() or 1)]
        raw, raw_parallel, e2e = [], [], []
        series_runs: list[StudyRun] = []
        study_runs: list[StudyRun] = []
        memory: list[list[ProcessMemory]] = []
        with running_stack(workdir, cache, production, args.processes, extra_env=SERIES_ENV, beat=True) as stack:
            push_and_wait(stack, 2, seed=999)  # warm-up: the worker loads the model
            for round_index in range(args.rounds):
                raw.append(raw_throughput(classifier))
                raw_parallel.append(raw_parallel_throughput(streams))
                e2e.append(push_and_wait(stack, args.images, seed=round_index))
                series_runs.append(push_study_and_wait(stack, [args.series_slices], 1 + round_index, args.clients))
                study_runs.append(push_study_and_wait(stack, args.study_series, 100 + round_index, args.clients))
                memory.append(process_tree_memory(stack.worker_pid))
            backend = stack.backend
        scaling = worker_scaling.run(args.rounds, cache, production, images=args.images)  # after: one broker queue
    figures = _figures(latency, raw, raw_parallel, e2e, backend, args)
    figures["study_level"] = _study_figures(raw, raw_parallel, series_runs, study_runs, args)
    figures["worker_memory"] = _memory_figures(memory)
    figures["decode_memory"] = decode_memory_figures(args.rounds)
    figures["ingest_vs_orthanc"] = ingest_vs_orthanc_figures(args.rounds)
    figures["turnaround_orthanc"] = turnaround_orthanc.run(args.rounds, args.processes)
    figures["worklist_scale"] = worklist_scale.run()
    figures["worker_scaling"] = {**scaling, "e2e_over_raw": figures["e2e_over_raw"]}
    figures["explanation_methods"] = explanation_methods.run()
    _write(args.report, figures)
    print(json.dumps(figures, indent=2))
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "benchmark.md")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=40, help="uploads per end-to-end round")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="worker processes, one ONNX thread each when > 1"
    )
    parser.add_argument("--embedded", action="store_true", help="use SQLite even when PostgreSQL/Redis are up")
    parser.add_argument("--series-slices", type=int, default=150, help="slices of the one-series study")
    parser.add_argument(
        "--study-series",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[50, 50, 50],
        help="slices per series of the multi-series study, comma-separated",
    )
    parser.add_argument("--clients", type=int, default=1, help="concurrent upload clients for the study figures")
    return parser.parse_args()


def _figures(
    latency: LatencyFigures,
    raw: list[float],
    raw_parallel: list[float],
    e2e: list[float],
    backend: str,
    args: argparse.Namespace,
) -> dict[str, object]:
    """The ratio is taken against the better of the two raw configurations: the honest ceiling."""
    raw_best = _raw_best(raw, raw_parallel)
    e2e_median = statistics.median(e2e)
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "backend": backend,
        "latency_runs": latency.runs,
        "plain_ms": round(latency.plain_ms, 1),
        "cam_ready_ms": round(latency.cam_ready_ms, 1),
        "explain_ms": round(latency.explain_ms, 1),
        "cam_ready_over_plain": round(latency.ratio, 3),
        "explain_over_plain": round(latency.explain_ratio, 3),
        "rounds": args.rounds,
        "images_per_round": args.images,
        "raw_images_per_s": [round(x, 2) for x in raw],
        "raw_parallel_images_per_s": [round(x, 2) for x in raw_parallel],
        "worker_processes": args.processes,
        "e2e_images_per_s": [round(x, 2) for x in e2e],
        "e2e_over_raw": round(e2e_median / raw_best, 3),
    }


def _raw_best(raw: list[float], raw_parallel: list[float]) -> float:
    """Images/s of the faster raw configuration (medians over rounds): the honest ceiling."""
    return max(statistics.median(raw), statistics.median(raw_parallel))


def _study_figures(
    raw: list[float],
    raw_parallel: list[float],
    series_runs: list[StudyRun],
    study_runs: list[StudyRun],
    args: argparse.Namespace,
) -> dict[str, object]:
    """Both study cases against the same raw ceiling as ``e2e_over_raw``."""
    raw_s = 1.0 / _raw_best(raw, raw_parallel)
    round_raw_s = [1.0 / max(one, parallel) for one, parallel in zip(raw, raw_parallel, strict=True)]
    cpus = os.cpu_count() or 1
    return {
        "raw_s_per_slice": round(raw_s, 4),
        "onnx_threads_per_process": max(1, cpus // args.processes) if args.processes > 1 else cpus,
        "quiet_seconds": QUIET_SECONDS,
        "sweep_seconds": SWEEP_SECONDS,
        "upload_clients": args.clients,
        "series": summarise(series_runs, raw_s, round_raw_s, args.processes),
        "study": summarise(study_runs, raw_s, round_raw_s, args.processes),
    }


def _memory_figures(samples: list[list[ProcessMemory]]) -> list[dict[str, object]]:
    """Per worker process: peak (VmHWM at the end) and resident size after every round."""
    final = samples[-1]
    return [
        {
            **process.as_dict(),
            "rss_mib_per_round": [
                next((p.rss_mib for p in sample if p.pid == process.pid), None) for sample in samples
            ],
        }
        for process in final
    ]


def decode_memory_figures(rounds: int) -> dict[str, float] | None:
    """Hook for ``tests/bench/decode_memory.py`` (``run(rounds) -> dict[str, float]``): its
    figures when the module is there, ``None`` (the report says so) when it is not."""
    if importlib.util.find_spec("decode_memory") is None:
        return None
    import decode_memory

    return dict(decode_memory.run(rounds=rounds))


def ingest_vs_orthanc_figures(rounds: int) -> dict[str, Any] | None:
    """``tests/bench/ingest_vs_orthanc.py``: STOW-RS and C-STORE instances/s, Sightline vs Orthanc
    (``None`` when PostgreSQL/Redis, storescu or Orthanc is missing; the section says why)."""
    import ingest_vs_orthanc

    return ingest_vs_orthanc.run(rounds=rounds)


def _write(path: Path, f: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sections = [
        study_section(f["study_level"], backend=f["backend"], processes=f["worker_processes"]),
        memory_section(f["worker_memory"], processes=f["worker_processes"]),
        decode_section(f["decode_memory"]),
        _ingest_section(f["ingest_vs_orthanc"]),
        turnaround_orthanc.section(f["turnaround_orthanc"]),
        worklist_scale.section(f["worklist_scale"]),
        worker_scaling.section(f["worker_scaling"]),
        explanation_methods.section(f["explanation_methods"]),
    ]
    path.write_text(_headline(f) + "".join(f"\n{section}" for section in sections))
    path.with_suffix(".json").write_text(json.dumps(f, indent=2) + "\n")


def _ingest_section(figures: dict[str, Any] | None) -> str:
    import ingest_vs_orthanc

    return ingest_vs_orthanc.section(figures)


def _headline(f: dict[str, Any]) -> str:
    return f"""# Sightline benchmark

Measured {f["measured_at"]} on {f["machine"]}; stack: {f["backend"]}.
Produced by `make bench` (`tests/bench/run.py`). Medians; all ratios come from one run.

| figure | value | target |
|---|---|---|
| plain ONNX Runtime inference (median of {f["latency_runs"]}) | {f["plain_ms"]} ms | |
| CAM-ready inference: probabilities + activations + gradients | {f["cam_ready_ms"]} ms | |
| whole `explain()`: preprocess + CAM-ready run + Grad-CAM map | {f["explain_ms"]} ms | |
| **CAM-ready / plain latency** | **{f["cam_ready_over_plain"]}** | ≤ 1.25 |
| whole explain / plain latency | {f["explain_over_plain"]} | |
| raw ONNX Runtime, one session on all cores (images/s) | {f["raw_images_per_s"]} | |
| raw ONNX Runtime, a 1-thread session per core side by side (images/s) | {f["raw_parallel_images_per_s"]} | |
| end-to-end throughput, {f["images_per_round"]} uploads per round (images/s) | {f["e2e_images_per_s"]} | |
| **end-to-end / raw throughput** (medians; the better raw configuration) | **{f["e2e_over_raw"]}** | ≥ 0.8 |

End to end = from the first upload request to the last job row marked done: API ingest
(parse, decode check, store, commit, publish), broker, {f["worker_processes"]} Celery worker process(es) (decode,
CAM-ready inference, Grad-CAM, four PNG renderings, result rows, triage update). Raw =
the plain model, batch 1, back to back, on preprocessed input; the ratio divides by the
faster of the two raw configurations. Worker processes use one ONNX thread each when there
are several (`SIGHTLINE_ONNX_THREADS`), which is how to deploy one worker per core. A Celery
beat process (reconciler, series sweep) runs beside the workers for every end-to-end figure.
"""


if __name__ == "__main__":
    raise SystemExit(main())
