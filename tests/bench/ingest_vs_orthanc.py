"""Ingest throughput, Sightline vs Orthanc: the same files, the same client, the same machine.

N synthetic MR slices (256 x 256, 16-bit, explicit VR little endian) are generated once;
every repeat relabels them with new Study/Series/SOP Instance UIDs per target (so nothing
is ever a re-send) and stores them four ways, interleaved so machine noise hits all:

- STOW-RS from Python (httpx, one keep-alive connection, ``multipart/related;
  type="application/dicom"``, ``--batch`` instances per request) into Sightline's
  ``POST /dicomweb/studies`` and Orthanc's ``POST /dicom-web/studies``;
- DCMTK ``storescu`` (one association, every file) into ``sightline dicom-listener`` and
  Orthanc's DICOM port.

The clock runs from the first request (or the storescu launch) to the last answer; each
figure is checked against the stores' own counts afterwards. Sightline runs as in
production: PostgreSQL + Redis, one uvicorn process (``sightline serve``'s default
``--workers 1``), the listener CLI; no Celery worker (ingest only: jobs wait in Redis).
Orthanc is Debian's, with its default SQLite index and file storage (no compression).
Orthanc and storescu run with ``TCP_NODELAY=1``: Debian's DCMTK leaves Nagle's algorithm on
otherwise, and each C-STORE then waits ~40 ms for a delayed ACK (Sightline's listener
already sets TCP_NODELAY).

Standalone: ``PYTHONPATH=.:tests .venv/bin/python tests/bench/ingest_vs_orthanc.py``
(writes its section into reports/benchmark.md); ``run.py`` calls ``run()`` and ``section()``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
from helpers import bearer, issue_token, make_mr_dicom, make_settings, scratch_pg_database, services_available
from orthanc import OrthancProcess, orthanc_missing
from pydicom.uid import UID
from sqlalchemy import func, select
from stack import REPO_ROOT, ServiceProcess, api_argv, free_port, wait_healthy

from service.db.migrate import upgrade
from service.db.session import unit_of_work
from service.db.tables import Instance, Role
from service.settings import Settings

REDIS_URL = os.environ.get("SIGHTLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
SECTION_TITLE = "## Ingest throughput: Sightline vs Orthanc"
LISTENER_AET = "SIGHTLINE"
SCU_AET = "STORESCU"
WAYS = ("sightline_stow", "orthanc_stow", "sightline_dimse", "orthanc_dimse")


@dataclass
class Targets:
    sightline_url: str
    ingest_token: str
    listener_port: int
    settings: Settings
    orthanc: OrthancProcess


def template_files(count: int) -> list[bytes]:
    """``count`` distinct 256 x 256 slices (generated once; relabelled per repeat and target)."""
    return [make_mr_dicom(size=256, lesion=(90, 100, 18) if i % 3 == 0 else None, seed=i) for i in range(count)]


def relabel(files: list[bytes]) -> list[bytes]:
    """The same pixels under a new study: new Study, Series and SOP Instance UIDs (meta included)."""
    study = f"2.25.{uuid.uuid4().int}"[:40]
    series = f"{study}.1"
    out = []
    for number, data in enumerate(files, start=1):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{series}.{number}")
        ds.InstanceNumber = number
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = f"sightline-bench-{uuid.uuid4().hex}"
    parts = [
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(url: str, headers: dict[str, str], files: list[bytes], batch: int) -> float:
    """POST ``files`` in batches of ``batch``; seconds from the first request to the last answer."""
    bodies = [multipart(files[i : i + batch]) for i in range(0, len(files), batch)]  # built before the clock
    with httpx.Client(headers={**headers, "Accept": "application/dicom+json"}, timeout=300) as client:
        started = time.perf_counter()
        for body, content_type in bodies:
            response = client.post(url, content=body, headers={"Content-Type": content_type})
            if response.status_code != 200:
                raise RuntimeError(f"STOW-RS to {url}: HTTP {response.status_code} {response.text[:500]}")
        return time.perf_counter() - started


def storescu(port: int, called_aet: str, folder: Path) -> float:
    """One storescu association sending every file of ``folder``; its wall time."""
    files = sorted(str(path) for path in folder.iterdir())
    argv = ["storescu", "-aet", SCU_AET, "-aec", called_aet, "-xe", "127.0.0.1", str(port), *files]
    started = time.perf_counter()
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK (Debian) leaves Nagle on otherwise; see tests/orthanc.py
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "E:" in done.stderr:
        raise RuntimeError(f"storescu to {called_aet} failed ({done.returncode}): {done.stderr[-1500:]}")
    return elapsed


def write_folder(root: Path, name: str, files: list[bytes]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for number, data in enumerate(files):
        (folder / f"{number:05d}.dcm").write_bytes(data)
    return folder


def sightline_count(settings: Settings) -> int:
    with unit_of_work(settings) as db:
        return int(db.scalar(select(func.count()).select_from(Instance)) or 0)


def measure_round(targets: Targets, templates: list[bytes], batch: int, workdir: Path) -> dict[str, float]:
    """One repeat: each way gets its own freshly labelled copy of the files; instances/s per way."""
    orthanc = targets.orthanc
    n = len(templates)
    copies = {way: relabel(templates) for way in WAYS}
    folders = {way: write_folder(workdir, f"{way}-{uuid.uuid4().hex[:6]}", copies[way]) for way in WAYS[2:]}
    counters: dict[str, Callable[[], int]] = {
        "sightline": lambda: sightline_count(targets.settings),
        "orthanc": lambda: int(orthanc.statistics()["CountInstances"]),
    }
    runs: dict[str, Callable[[], float]] = {
        "sightline_stow": lambda: stow(
            f"{targets.sightline_url}/dicomweb/studies", bearer(targets.ingest_token), copies["sightline_stow"], batch
        ),
        "orthanc_stow": lambda: stow(f"{orthanc.url}/dicom-web/studies", {}, copies["orthanc_stow"], batch),
        "sightline_dimse": lambda: storescu(targets.listener_port, LISTENER_AET, folders["sightline_dimse"]),
        "orthanc_dimse": lambda: storescu(orthanc.dicom_port, orthanc.aet, folders["orthanc_dimse"]),
    }
    rates: dict[str, float] = {}
    for way in WAYS:
        count = counters[way.split("_")[0]]
        before = count()
        elapsed = runs[way]()
        stored = count() - before
        if stored != n:
            raise RuntimeError(f"{way}: {stored} of {n} instances stored")
        rates[way] = n / elapsed
    for folder in folders.values():
        shutil.rmtree(folder)
    return rates


@contextmanager
def running_targets(workdir: Path) -> Iterator[Targets]:
    """Sightline (PostgreSQL + Redis, uvicorn API, listener CLI) and Orthanc, all on 127.0.0.1."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_pg_database("sightline_ingest_bench") as url:
        upgrade(url)
        settings = make_settings(workdir / "sightline", database_url=url, broker_url=REDIS_URL)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
        env.update(
            SIGHTLINE_DATABASE_URL=url,
            SIGHTLINE_BROKER_URL=REDIS_URL,
            SIGHTLINE_STORAGE_DIR=str(settings.storage_dir),
            SIGHTLINE_MODEL_CACHE_DIR=str(workdir / "model-cache"),
            SIGHTLINE_LOG_JSON="true",
            SIGHTLINE_LOG_LEVEL="WARNING",  # no per-association INFO lines in the timed path
            SIGHTLINE_DICOM_AE_TITLE=LISTENER_AET,
            SIGHTLINE_DICOM_ALLOWED_CALLING_AETS=json.dumps([SCU_AET]),
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
        )
        api_port, listener_port = free_port(), free_port()
        listener_argv = [sys.executable, "-m", "service.cli", "dicom-listener", "--port", str(listener_port)]
        started: list[ServiceProcess] = []
        orthanc = OrthancProcess(workdir / "orthanc")
        try:
            api = ServiceProcess("api", api_argv(api_port), env, workdir / "api.log")
            started.append(api)
            listener = ServiceProcess("dicom-listener", listener_argv, env, workdir / "listener.log")
            started.append(listener)
            orthanc.start()
            api_url = f"http://127.0.0.1:{api_port}"
            wait_healthy(api_url, api)
            _wait_port(listener_port, listener)
            yield Targets(api_url, issue_token(settings, Role.ingest), listener_port, settings, orthanc)
        finally:
            orthanc.stop()
            for process in reversed(started):
                process.stop()


def _wait_port(port: int, process: ServiceProcess, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the DICOM listener did not come up:\n{process.log_text()[-3000:]}") from None
            time.sleep(0.2)


def unavailable() -> str | None:
    """Why this bench cannot run here, or ``None``."""
    if not services_available():
        return "PostgreSQL/Redis not reachable on 127.0.0.1"
    if shutil.which("storescu") is None:
        return "DCMTK storescu is not installed"
    return orthanc_missing()


def run(rounds: int = 3, instances: int = 150, batch: int = 50) -> dict[str, Any] | None:
    """The figures (medians over ``rounds``, ratios Sightline / Orthanc), or ``None`` when it cannot run."""
    reason = unavailable()
    if reason is not None:
        print(f"ingest_vs_orthanc skipped: {reason}", file=sys.stderr)
        return None
    templates = template_files(instances)
    per_round: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sightline-ingest-bench-") as tmp:
        workdir = Path(tmp)
        with running_targets(workdir) as targets:
            measure_round(targets, templates[:10], batch, workdir)  # warm-up: imports, connections, caches
            for _ in range(rounds):
                per_round.append(measure_round(targets, templates, batch, workdir))
            version = str(targets.orthanc.get("/system")["Version"])
    medians = {way: statistics.median(r[way] for r in per_round) for way in WAYS}
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "orthanc_version": version,
        "rounds": rounds,
        "instances": instances,
        "file_bytes": len(templates[0]),
        "stow_batch": batch,
        "per_round_instances_per_s": {way: [round(r[way], 1) for r in per_round] for way in WAYS},
        "median_instances_per_s": {way: round(v, 1) for way, v in medians.items()},
        "stow_sightline_over_orthanc": round(medians["sightline_stow"] / medians["orthanc_stow"], 3),
        "dimse_sightline_over_orthanc": round(medians["sightline_dimse"] / medians["orthanc_dimse"], 3),
    }


def section(f: dict[str, Any] | None) -> str:
    """The Markdown section of ``reports/benchmark.md``."""
    if f is None:
        return f"{SECTION_TITLE}\n\nNot measured in this run: {unavailable() or 'disabled'}.\n"
    m, rounds = f["median_instances_per_s"], f["per_round_instances_per_s"]
    rows = [
        (f"STOW-RS, {f['stow_batch']} instances per request (httpx)", "sightline_stow", "orthanc_stow",
         f["stow_sightline_over_orthanc"]),
        ("C-STORE, storescu, one association", "sightline_dimse", "orthanc_dimse", f["dimse_sightline_over_orthanc"]),
    ]  # fmt: skip
    table = "\n".join(
        f"| {name} | **{m[s]}** ({rounds[s]}) | **{m[o]}** ({rounds[o]}) | **{ratio}** |" for name, s, o, ratio in rows
    )
    return f"""{SECTION_TITLE}

Instances stored per second (median of {f["rounds"]} rounds; each round's figure in brackets),
the same {f["instances"]} synthetic MR slices (256 × 256, 16-bit, {f["file_bytes"]} bytes each) sent to
each target under new UIDs every round, on {f["machine"]}. Sightline: PostgreSQL + Redis,
one uvicorn process (`sightline serve` default), `sightline dicom-listener`; ingest only, no
Celery worker running. Orthanc {f["orthanc_version"]} (Debian) with its DICOMweb plugin,
default SQLite index, uncompressed file storage; Orthanc and storescu with `TCP_NODELAY=1`
(Debian's DCMTK otherwise leaves Nagle on: ~47 ms per C-STORE into Orthanc). Client, servers and databases share the
machine's cores. Produced by `tests/bench/ingest_vs_orthanc.py`.

| way | Sightline (instances/s) | Orthanc (instances/s) | Sightline / Orthanc |
|---|---|---|---|
{table}
"""


def write_section(report: Path, text: str) -> None:
    """Replace this bench's section of ``report`` (or append it), leaving the rest as it is."""
    current = report.read_text() if report.exists() else "# Sightline benchmark\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1).rstrip("\n") + "\n"
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(updated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "reports" / "benchmark.md")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=150)
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    args = parser.parse_args()
    figures = run(args.rounds, args.instances, args.batch)
    write_section(args.report, section(figures))
    print(json.dumps(figures, indent=2))
    return 0 if figures is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
