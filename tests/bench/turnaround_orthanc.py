"""Study turnaround with a real PACS: Orthanc pushes a 3-series, 150-slice MR study to Sightline
by STOW-RS; Sightline analyses it and pushes its SR, Secondary Capture and presentation state
back to Orthanc by C-STORE. Measured per round, in one run:

- turnaround: the study's ``turnaround_seconds`` (last instance received → result objects
  stored in Orthanc), as Sightline records it;
- the bound the issue sets: the slices' inference time on the workers (the sum of the study's
  job durations over the number of worker processes) + the quiet period;
- ratio = turnaround / bound (aim ≤ 1.2).

The study arrives faster than the workers drain it, so most inference happens after the
last instance: the bound is what a perfect pipeline would take from that moment.
Run standalone: ``PYTHONPATH=.:tests .venv/bin/python tests/bench/turnaround_orthanc.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from end_to_end import Stack, running_stack
from helpers import bearer, issue_token, mr_slice, services_available
from orthanc import OrthancProcess, orthanc_missing
from sqlalchemy import select

from models.inference import Classifier
from models.registry import get_manifest
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, Role, Study
from service.settings import Settings

QUIET_SECONDS = 2.0
SWEEP_SECONDS = 0.5
SERIES, SLICES = 3, 50
TIMEOUT_S = 900.0


def study(seed: int) -> tuple[str, list[bytes]]:
    study_uid = f"2.25.{uuid.uuid4().int >> 64}"
    files = [
        mr_slice(study_uid, f"{study_uid}.{s}", n, lesion=(s == 2 and 20 <= n <= 26), SeriesNumber=s)
        for s in range(1, SERIES + 1)
        for n in range(1, SLICES + 1)
    ]
    return study_uid, files


def job_seconds(settings: Settings, study_uid: str) -> float:
    with unit_of_work(settings) as db:
        rows = db.execute(
            select(AnalysisJob.started_at, AnalysisJob.finished_at)
            .join(Instance, AnalysisJob.instance_id == Instance.id)
            .join(Study, Instance.study_id == Study.id)
            .where(Study.study_instance_uid == study_uid)
        ).all()
    return sum((end - start).total_seconds() for start, end in rows if start and end)


def one_round(stack: Stack, orthanc: OrthancProcess, processes: int, seed: int) -> dict[str, float]:
    study_uid, files = study(seed)
    answers = [orthanc.upload(data) for data in files]
    orthanc_study = str(answers[0]["ParentStudy"])
    started = time.monotonic()
    job = orthanc.forward_stow(orthanc_study)
    assert job["State"] == "Success", job
    pushed = time.monotonic() - started
    reader = bearer(issue_token(stack.settings, Role.reader))
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        body = httpx.get(f"{stack.api_url}/api/v1/studies/{study_uid}/results", headers=reader, timeout=10).json()
        if body.get("turnaround_seconds") is not None:
            break
        time.sleep(0.25)
    else:
        raise TimeoutError(f"study {seed}: results not delivered within {TIMEOUT_S} s")
    inference = job_seconds(stack.settings, study_uid) / processes
    turnaround = float(body["turnaround_seconds"])
    return {
        "forward_seconds": round(pushed, 2),
        "turnaround_seconds": round(turnaround, 2),
        "inference_seconds_per_worker": round(inference, 2),
        "ratio": round(turnaround / (inference + QUIET_SECONDS), 3),
    }


def run(rounds: int, processes: int) -> dict[str, Any] | None:
    if (missing := orthanc_missing()) or not services_available():
        print(f"turnaround bench skipped: {missing or 'PostgreSQL/Redis not running'}")
        return None
    with tempfile.TemporaryDirectory(prefix="sightline-turnaround-") as tmp:
        workdir = Path(tmp)
        cache = workdir / "model-cache"
        Classifier(get_manifest(Settings.model_fields["model_name"].default), cache_dir=cache)
        with OrthancProcess(workdir / "orthanc") as orthanc:  # told where Sightline is once it runs
            destination = {"name": "orthanc", "kind": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1"}
            env = {
                "SIGHTLINE_SERIES_QUIET_SECONDS": str(QUIET_SECONDS),
                "SIGHTLINE_SERIES_SWEEP_SECONDS": str(SWEEP_SECONDS),
                "SIGHTLINE_RESULT_DESTINATIONS": json.dumps([{**destination, "port": orthanc.dicom_port}]),
            }
            with running_stack(workdir, cache, True, processes, extra_env=env, beat=True) as stack:
                server = {"Url": f"{stack.api_url}/dicomweb/", "HttpHeaders": bearer(stack.ingest_token)}
                httpx.put(f"{orthanc.url}/dicom-web/servers/sightline", json=server, timeout=10).raise_for_status()
                runs = [one_round(stack, orthanc, processes, seed) for seed in range(rounds)]
    return {
        "study": f"{SERIES} series x {SLICES} slices, 256x256 MR, pushed by Orthanc (STOW-RS)",
        "results_to": "Orthanc by C-STORE",
        "worker_processes": processes,
        "quiet_seconds": QUIET_SECONDS,
        "rounds": runs,
        "median_turnaround_seconds": statistics.median(r["turnaround_seconds"] for r in runs),
        "median_ratio": statistics.median(r["ratio"] for r in runs),
        "machine": f"{os.cpu_count()} CPUs",
    }


def section(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "## Study turnaround with Orthanc\n\nNot measured: Orthanc or PostgreSQL/Redis missing.\n"
    rows = "\n".join(
        f"| {i + 1} | {r['forward_seconds']} | {r['turnaround_seconds']} | {r['inference_seconds_per_worker']} "
        f"| {r['ratio']} |"
        for i, r in enumerate(figures["rounds"])
    )
    return (
        "## Study turnaround with Orthanc\n\n"
        f"{figures['study']}; results back to {figures['results_to']}; {figures['worker_processes']} worker "
        f"processes; quiet period {figures['quiet_seconds']} s; {figures['machine']}.\n\n"
        "| round | Orthanc forward (s) | turnaround (s) | inference per worker (s) | turnaround / (inference + quiet) "
        "|\n"
        "|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Median turnaround {figures['median_turnaround_seconds']} s; median ratio **{figures['median_ratio']}** "
        "(aim ≤ 1.2).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    figures = run(args.rounds, args.processes)
    print(json.dumps(figures, indent=2))
    print(section(figures))


if __name__ == "__main__":
    main()
