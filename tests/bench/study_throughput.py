"""Study-level throughput: from the first upload of a study to its triage score.

A PACS sends a study one instance at a time (C-STORE, or STOW-RS one file per request):
here every slice is one POST to ``/api/v1/uploads``, series after series. The clock stops
when the study row says ``analysed`` with a triage score, which needs every job done and
every series complete (quiet for ``SIGHTLINE_SERIES_QUIET_SECONDS``, then completed by
the last job or by the ``sightline.sweep_series`` beat task; ``service.db.series_state``).
The job and series timestamps split that time into upload, analysis and completion.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import httpx
from end_to_end import Stack
from helpers import bearer
from process_usage import cpu_snapshot, cpu_used
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from synthetic_series import LESION_HALF_DEPTH, mr_series

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AnalysisResult, Instance, JobStatus, Series, Study, StudyStatus

QUIET_SECONDS = 1.0
SWEEP_SECONDS = 0.5
# Passed to the API, the workers and beat: short enough that a bench study completes soon
# after its last job, long enough that a series is not completed between two slices.
SERIES_ENV = {
    "SIGHTLINE_SERIES_QUIET_SECONDS": str(QUIET_SECONDS),
    "SIGHTLINE_SERIES_SWEEP_SECONDS": str(SWEEP_SECONDS),
}
POLL_S = 0.05  # the clock's resolution once no job is left
POLL_MAX_S = 1.0


@dataclass(frozen=True)
class StudyRun:
    """One study pushed and waited for; times in seconds from the first upload request."""

    slices: int
    series: int
    wall_s: float  # until the study is analysed with a triage score (bench clock)
    upload_s: float  # until the last upload was answered
    last_job_s: float  # until the last job row was marked finished (worker clock, same host)
    completed_s: float  # until the last series was marked complete (worker clock, same host)
    first_claim_s: float  # until the first job was claimed by a worker
    job_s: float  # mean claim-to-finish time of one job
    busy_s: float  # sum of every job's claim-to-finish time
    analyse_ms: float  # mean worker time per job in decode + model + CAM (timings_ms["analyse"])
    inference_ms: float  # of which the CAM-ready ONNX Runtime run (timings_ms["inference"])
    render_ms: float  # mean worker time per job rendering the four PNGs
    triage_score: float
    key_on_lesion: bool  # every series' key slice lies on the synthetic lesion
    cpu_s: dict[str, float]  # CPU seconds used meanwhile by the api, worker and beat trees, this client, the rest


def push_study_and_wait(
    stack: Stack, series_slices: list[int], seed: int, upload_clients: int = 1, timeout_s: float = 900.0
) -> StudyRun:
    """Upload one study (``series_slices[i]`` slices in series i) and wait for its triage score."""
    study_uid = str(generate_uid())
    series = [
        mr_series(study_uid, str(generate_uid()), slices, seed=seed * 10 + number, series_number=number + 1)
        for number, slices in enumerate(series_slices)
    ]
    files = [data for stack_files in series for data in stack_files]
    pids = {"api": stack.api_pid, "worker": stack.worker_pid, **({"beat": stack.beat_pid} if stack.beat_pid else {})}
    cpu_before = cpu_snapshot(pids)
    started_at, started = datetime.now(UTC), time.perf_counter()
    _upload(stack, files, upload_clients)
    upload_s = time.perf_counter() - started
    deadline = time.monotonic() + timeout_s
    while (pending := _pending_jobs(stack, study_uid)) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"study of {len(files)} slices not analysed within {timeout_s} s")
        # The client shares the cores with the workers: poll rarely while many jobs are left.
        time.sleep(min(POLL_MAX_S, max(POLL_S, pending * POLL_S)))
    wall_s = time.perf_counter() - started
    run = _breakdown(stack, study_uid, series_slices, started_at, wall_s, upload_s)
    return replace(run, cpu_s=cpu_used(cpu_before, cpu_snapshot(pids)))


def _upload(stack: Stack, files: list[bytes], clients: int) -> None:
    """One file per request; ``clients`` > 1 sends from that many threads at once."""
    with httpx.Client(base_url=stack.api_url, headers=bearer(stack.ingest_token), timeout=60) as client:

        def post(indexed: tuple[int, bytes]) -> None:
            index, data = indexed
            files = [("files", (f"{index}.dcm", data, "application/dicom"))]
            client.post("/api/v1/uploads", files=files).raise_for_status()

        if clients == 1:
            for indexed in enumerate(files):
                post(indexed)
            return
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post, enumerate(files)))


def _pending_jobs(stack: Stack, study_uid: str) -> int | None:
    """``None`` once the study is analysed with a triage score, else how many of its jobs are pending."""
    pending = (
        select(func.count())
        .select_from(AnalysisJob)
        .join(Instance, AnalysisJob.instance_id == Instance.id)
        .where(Instance.study_id == Study.id, AnalysisJob.status.in_((JobStatus.queued, JobStatus.running)))
        .scalar_subquery()
    )
    with unit_of_work(stack.settings) as db:
        row = db.execute(
            select(Study.status, Study.triage_score, pending).where(Study.study_instance_uid == study_uid)
        ).one_or_none()
    if row is None:
        return 0
    status, triage_score, count = row
    if status in (StudyStatus.failed, StudyStatus.not_applicable):
        raise RuntimeError(f"the bench study ended {status.value}; see the worker log")
    return None if status == StudyStatus.analysed and triage_score is not None else int(count)


def _breakdown(
    stack: Stack, study_uid: str, series_slices: list[int], started_at: datetime, wall_s: float, upload_s: float
) -> StudyRun:
    with unit_of_work(stack.settings) as db:
        study = db.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        rows = db.execute(
            select(AnalysisJob.started_at, AnalysisJob.finished_at, AnalysisResult.timings_ms)
            .join(Instance, AnalysisJob.instance_id == Instance.id)
            .join(AnalysisResult, AnalysisResult.job_id == AnalysisJob.id)
            .where(Instance.study_id == study.id, AnalysisJob.status == JobStatus.succeeded)
        ).all()
        completed = db.scalar(select(func.max(Series.completed_at)).where(Series.study_id == study.id))
        key_numbers = db.execute(
            select(Series.scored_slices, Instance.instance_number)
            .join(Instance, Instance.id == Series.key_instance_id)
            .where(Series.study_id == study.id)
        ).all()
        triage_score = float(study.triage_score or 0.0)
    if len(rows) != sum(series_slices) or completed is None:
        raise RuntimeError(f"{len(rows)} of {sum(series_slices)} jobs succeeded; last series completed: {completed}")
    jobs = [(_utc(claimed), _utc(finished), timings) for claimed, finished, timings in rows]
    durations = [(finished - claimed).total_seconds() for claimed, finished, _ in jobs]
    return StudyRun(
        slices=sum(series_slices),
        series=len(series_slices),
        wall_s=wall_s,
        upload_s=upload_s,
        last_job_s=(max(finished for _, finished, _ in jobs) - started_at).total_seconds(),
        completed_s=(_utc(completed) - started_at).total_seconds(),
        first_claim_s=(min(claimed for claimed, _, _ in jobs) - started_at).total_seconds(),
        job_s=statistics.mean(durations),
        busy_s=sum(durations),
        analyse_ms=statistics.mean(timings["analyse"] for _, _, timings in jobs),
        render_ms=statistics.mean(timings["render"] for _, _, timings in jobs),
        inference_ms=statistics.mean(timings["inference"] for _, _, timings in jobs),
        triage_score=triage_score,
        key_on_lesion=len(key_numbers) == len(series_slices)
        and all(_on_lesion(number, scored) for scored, number in key_numbers),
        cpu_s={},
    )


def _utc(moment: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive (they were written in UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _on_lesion(instance_number: int | None, slices: int) -> bool:
    """The synthetic lesion is centred on slice index round(0.6 * slices) (``mr_series``)."""
    centre = round(slices * 0.6) + 1  # Instance Number counts from 1
    return instance_number is not None and abs(instance_number - centre) < LESION_HALF_DEPTH


def summarise(
    runs: list[StudyRun], raw_s_per_slice: float, round_raw_s: list[float], processes: int
) -> dict[str, object]:
    """Medians over rounds, and the ratio to the raw model time of the same number of slices.

    ``raw_s_per_slice`` comes from the medians of the raw rounds (the headline ratio);
    ``round_raw_s`` holds each round's own figure, for the per-round ratios.
    """
    wall = statistics.median(r.wall_s for r in runs)
    slices = runs[0].slices
    ideal = slices * raw_s_per_slice
    return {
        "slices": slices,
        "series": runs[0].series,
        "wall_s": [round(r.wall_s, 2) for r in runs],
        "wall_s_median": round(wall, 2),
        "upload_s_median": round(statistics.median(r.upload_s for r in runs), 2),
        "last_job_s_median": round(statistics.median(r.last_job_s for r in runs), 2),
        "completed_s_median": round(statistics.median(r.completed_s for r in runs), 2),
        "after_last_job_s_median": round(statistics.median(r.wall_s - r.last_job_s for r in runs), 2),
        "job_s_median": round(statistics.median(r.job_s for r in runs), 3),
        "outside_job_s_median": round(statistics.median(_outside_job_s(r, processes) for r in runs), 3),
        "analyse_ms_median": round(statistics.median(r.analyse_ms for r in runs), 1),
        "render_ms_median": round(statistics.median(r.render_ms for r in runs), 1),
        "inference_ms_median": round(statistics.median(r.inference_ms for r in runs), 1),
        "cpu_s_per_slice_median": {
            name: round(statistics.median(r.cpu_s[name] / r.slices for r in runs), 3) for name in runs[0].cpu_s
        },
        "slices_per_s": round(slices / wall, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round(wall / ideal, 3),
        "ratio_without_quiet": round((wall - QUIET_SECONDS) / ideal, 3),
        "ratio_per_round": [round(r.wall_s / (slices * raw), 3) for r, raw in zip(runs, round_raw_s, strict=True)],
        "triage_scores": [round(r.triage_score, 3) for r in runs],
        "key_on_lesion": all(r.key_on_lesion for r in runs),
    }


def _outside_job_s(run: StudyRun, processes: int) -> float:
    """Worker-process seconds per job spent outside claim-to-finish (storing the PNGs and rows,
    settling the study, commit, broker round trip, next claim), from the first claim to the last finish."""
    return (processes * (run.last_job_s - run.first_claim_s) - run.busy_s) / run.slices
