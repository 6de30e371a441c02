"""Markdown sections of ``reports/benchmark.md`` after the headline table (see ``run.py``)."""

from __future__ import annotations

from typing import Any


def study_section(s: dict[str, Any], *, backend: str, processes: int) -> str:
    """Study-level throughput: one column per case, every figure from the same rounds."""
    one, many = s["series"], s["study"]
    budget_ms = round(processes * s["raw_s_per_slice"] * 1000, 1)
    uploads = "one client, sequentially" if s["upload_clients"] == 1 else f"{s['upload_clients']} concurrent clients"
    rows = [
        ("wall time per round (s)", one["wall_s"], many["wall_s"], ""),
        ("**wall time** (s)", one["wall_s_median"], many["wall_s_median"], ""),
        ("last upload answered at (s)", one["upload_s_median"], many["upload_s_median"], ""),
        ("last job marked finished at (s)", one["last_job_s_median"], many["last_job_s_median"], ""),
        ("last series marked complete at (s)", one["completed_s_median"], many["completed_s_median"], ""),
        ("study analysed, after the last job finished (s)", one["after_last_job_s_median"],
         many["after_last_job_s_median"], ""),
        ("slices/s", one["slices_per_s"], many["slices_per_s"], ""),
        ("slices × raw s/slice (s)", one["ideal_s"], many["ideal_s"], ""),
        ("**wall time / (slices × raw s/slice)**", f"**{one['ratio']}**", f"**{many['ratio']}**", "≤ 1.15"),
        ("same, per round (each round's own raw figure)", one["ratio_per_round"], many["ratio_per_round"], ""),
        (f"same, the {s['quiet_seconds']} s quiet period subtracted from the wall time", one["ratio_without_quiet"],
         many["ratio_without_quiet"], ""),
        ("mean job time, claim to finished (s)", one["job_s_median"], many["job_s_median"], ""),
        ("worker time per job outside claim to finished (s)", one["outside_job_s_median"],
         many["outside_job_s_median"], ""),
        ("mean worker time per job: decode + model + CAM (ms)", one["analyse_ms_median"],
         many["analyse_ms_median"], ""),
        ("of which the CAM-ready ONNX Runtime run (ms)", one["inference_ms_median"], many["inference_ms_median"], ""),
        ("mean worker time per job: four PNG renderings (ms)", one["render_ms_median"], many["render_ms_median"], ""),
        (f"per-job budget at the raw rate ({processes} × raw s/slice, ms)", budget_ms, budget_ms, ""),
        *_cpu_rows(one["cpu_s_per_slice_median"], many["cpu_s_per_slice_median"]),
        ("study triage score per round", one["triage_scores"], many["triage_scores"], ""),
        ("key slice of every series on the synthetic lesion", _yes(one["key_on_lesion"]),
         _yes(many["key_on_lesion"]), ""),
    ]  # fmt: skip
    table = "\n".join(f"| {name} | {a} | {b} | {target} |" for name, a, b, target in rows)
    return f"""## Study-level throughput

From the first upload request to the study row `analysed` with a non-null `triage_score`
(polled every 50 ms once no job is pending, less often before), for one
{one["slices"]}-slice series and one study of {many["series"]} series ({many["slices"]} slices
in all); medians over the rounds. Ratio = wall time / (slices × raw seconds per slice), with
raw seconds per slice = {s["raw_s_per_slice"]} s (1 / the faster raw configuration above,
measured in the same rounds); nothing is subtracted from it.

Configuration: {backend}; {processes} Celery worker process(es) (prefork pool, concurrency
{processes}), {s["onnx_threads_per_process"]} ONNX Runtime thread(s) each; one separate Celery
beat process; `SIGHTLINE_SERIES_QUIET_SECONDS={s["quiet_seconds"]}` and
`SIGHTLINE_SERIES_SWEEP_SECONDS={s["sweep_seconds"]}` for the API, the workers and beat. Each
slice is a synthetic 256 × 256 MR image with a real Image Plane module (one axial stack, a
lesion on five adjacent slices) sent as one POST to `/api/v1/uploads` ({uploads}; series
after series), as a PACS sends instances one by one.

| figure | {one["slices"]}-slice series | {many["series"]}-series study | target |
|---|---|---|---|
{table}

Times "at" are seconds from the first upload request; job and series times come from the
rows' timestamps (worker clock, same machine). A job is "finished" when its row is marked,
at the start of the storing transaction; the time outside claim to finished ({processes} ×
(last finish − first claim) − the sum of the jobs' claim-to-finished times, per job) holds
the PNG and row writes, the study settle, the commit, the broker round trip and the next
claim. A series completes once no instance arrived for the quiet period and none of its
jobs is pending, in the last job's transaction or by the beat sweep; the quiet period only
costs time when the last job finishes less than {s["quiet_seconds"]} s after the last upload,
so the second ratio (the whole quiet period subtracted) is a lower bound, not the figure to
quote. CPU seconds (user + system) come from `/proc/<pid>/stat` of each process tree and
from `/proc/stat` for the whole machine, between the first upload and the study score.
"""


def memory_section(tree: list[dict[str, Any]], *, processes: int) -> str:
    """Resident memory of the worker's process tree at the end of the run."""
    rows = "\n".join(f"| {p['role']} | {p['pid']} | {p['peak_mib']} | {p['rss_mib_per_round']} |" for p in tree)
    return f"""## Worker memory

The Celery worker's processes (`/proc/<pid>/status`): the main process takes messages from
the broker; each of the {processes} prefork children loads the model and runs jobs. Peak = `VmHWM` (largest
resident set since the process started, read after the last round); resident = `VmRSS`
after each round.

| process | pid | peak resident (MiB) | resident after each round (MiB) |
|---|---|---|---|
{rows}
| **all worker processes** | | **{round(sum(p["peak_mib"] for p in tree), 1)}** (sum of peaks) | \
{round(sum(p["rss_mib"] for p in tree), 1)} (after the last round) |
"""


def decode_section(figures: dict[str, float] | None) -> str:
    """Peak decode memory per megapixel (``decode_memory.py``), or a note that it is absent."""
    if figures is None:
        return "## Decode memory\n\nNot measured: `tests/bench/decode_memory.py` is not present.\n"
    rows = "\n".join(f"| `{name}` | {value} |" for name, value in figures.items())
    return f"""## Decode memory

Peak resident-set growth while `models.pixels.decode_image` decodes one upload, per decoded
megapixel (MB/Mpx, i.e. bytes per pixel; median of fresh processes; see
`tests/bench/decode_memory.py` for the inputs).

| input | peak RSS growth (MB per decoded megapixel) |
|---|---|
{rows}
"""


CPU_NAMES = {
    "api": "API (ingest)",
    "worker": "worker processes",
    "beat": "beat",
    "bench_client": "bench client (uploads, polling)",
    "other": "rest of the machine (PostgreSQL, Redis, other users)",
    "machine": "whole machine",
}


def _cpu_rows(one: dict[str, float], many: dict[str, float]) -> list[tuple[str, object, object, str]]:
    """CPU seconds per slice of each process group while the study was pushed and analysed."""
    return [(f"CPU s per slice: {label}", one.get(name), many.get(name), "") for name, label in CPU_NAMES.items()]


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"
