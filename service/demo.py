"""``sightline demo``: the whole system on one machine with the embedded defaults.

Same code path as production: the API and a real Celery worker (with the reconciler beat
embedded) run as separate processes over SQLite, a SQLite-backed broker and local files.
The sample studies are synthetic drawings and say so in their patient name and description.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.synthetic import Lesion, synthetic_slice
from service.auth.tokens import create_token
from service.db.migrate import upgrade
from service.db.session import unit_of_work
from service.db.tables import Role
from service.settings import Settings, get_settings

SAMPLE_LESIONS = [Lesion(0.35, 0.40, 0.09), None, Lesion(0.62, 0.58, 0.06), Lesion(0.5, 0.30, 0.05)]
DEMO_UID_SEED = "sightline-demo-v2"
SLICES_PER_SAMPLE = 5
# A short quiet period so the samples are scored seconds after they arrive (production: 30 s).
DEMO_SERIES_ENV = {"SIGHTLINE_SERIES_QUIET_SECONDS": "2", "SIGHTLINE_SERIES_SWEEP_SECONDS": "1"}


def _demo_uid(index: int, part: str) -> str:
    return str(generate_uid(entropy_srcs=[DEMO_UID_SEED, str(index), part]))


def synthetic_series(index: int) -> list[bytes]:
    """Sample study ``index``: an axial series of ``SLICES_PER_SAMPLE`` slices 5 mm apart; a
    lesion, when the sample has one, spans the middle three (a real lesion spans adjacent slices)."""
    return [synthetic_dicom(index, number) for number in range(1, SLICES_PER_SAMPLE + 1)]


def synthetic_dicom(index: int, number: int = 1) -> bytes:
    """Slice ``number`` of sample study ``index`` as an MR DICOM file; UIDs are deterministic so
    re-runs are idempotent."""
    lesion = SAMPLE_LESIONS[index % len(SAMPLE_LESIONS)] if 2 <= number <= 4 else None
    pixels = synthetic_slice(256, lesion=lesion, seed=index * 100 + number)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in _demo_attributes(index).items():
        setattr(ds, keyword, value)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, _demo_uid(index, f"sop{number}")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _demo_uid(index, "study"), _demo_uid(index, "series")
    ds.InstanceNumber, ds.ImageType = number, ["ORIGINAL", "PRIMARY", "M"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * number], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 5
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _demo_attributes(index: int) -> dict[str, object]:
    return {
        "PatientName": f"SYNTHETIC^DEMO{index + 1}",
        "PatientID": f"SYNTH-{index + 1:04d}",
        "AccessionNumber": f"DEMO{index + 1:04d}",
        "StudyDate": time.strftime("%Y%m%d"),
        "StudyTime": time.strftime("%H%M%S"),
        "Modality": "MR",
        "BodyPartExamined": "BRAIN",
        "StudyDescription": "SYNTHETIC DEMO - NOT A PATIENT",
        "SeriesDescription": "SYNTHETIC AX T1",
        "SeriesNumber": 1,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 12,
        "HighBit": 11,
        "PixelRepresentation": 0,
        "WindowCenter": 800,
        "WindowWidth": 1600,
    }


LOG_DIR = Path("./var/logs")


def _spawn(name: str, args: list[str], settings: Settings) -> subprocess.Popen[bytes]:
    """Start one child with its log in ``var/logs/<name>.log``, so the terminal shows the banner."""
    env = {
        **DEMO_SERIES_ENV,
        **os.environ,
        "SIGHTLINE_DATABASE_URL": settings.database_url,
        "SIGHTLINE_BROKER_URL": settings.broker_url,
    }
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


STOP_GRACE_S = 10.0  # how long children get to stop after SIGTERM before SIGKILL


class DemoStopped(Exception):
    """SIGTERM or SIGINT reached the demo: stop the children and exit cleanly."""


class ChildDied(Exception):
    """A child process exited while the demo needed it; the message is one line for the operator."""


def _stop_on_signal(signum: int, _: object) -> None:
    raise DemoStopped(signal.Signals(signum).name)


def _start_children(settings: Settings, children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Start the API and the worker (the reconciler beat runs inside it) into ``children``."""
    worker = ["-m", "service.cli", "worker", "--pool=solo", "--beat", "--schedule", "./var/celerybeat-schedule"]
    children["api"] = _spawn("api", ["-m", "service.cli", "serve"], settings)
    children["worker"] = _spawn("worker", worker, settings)


def _check_children(children: dict[str, subprocess.Popen[bytes]], settings: Settings) -> None:
    """Raise ``ChildDied`` naming the first child that has exited, and the port if it could not bind."""
    for name, child in children.items():
        if child.poll() is None:
            continue
        log = LOG_DIR / f"{name}.log"
        tail = log.read_text(errors="replace")[-4000:].lower() if log.exists() else ""
        if name == "api" and "address already in use" in tail:
            raise ChildDied(
                f"the API could not listen on {settings.host}:{settings.port}: the port is already in use "
                "(stop what holds it or set SIGHTLINE_PORT)"
            )
        raise ChildDied(f"the {name} process exited with code {child.returncode}; see {log}")


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every child's process group, then SIGKILL what is left after ``STOP_GRACE_S``.

    Each child leads its own group (``start_new_session``), so grandchildren (a Celery pool,
    uvicorn workers) go too, and a Ctrl+C in the terminal reaches only the demo.
    """
    _signal_groups(children, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
    _signal_groups(children, signal.SIGKILL)
    for child in children.values():
        child.wait()


def _signal_groups(children: dict[str, subprocess.Popen[bytes]], signum: signal.Signals) -> None:
    for child in children.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)  # the group may outlive its leader


def _wait_ready(base_url: str, check: Callable[[], None], deadline_s: float = 180.0) -> None:
    """Poll ``/readyz``; ``check`` raises as soon as a child has died, instead of waiting out the deadline."""
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        check()
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API did not become ready at {base_url} within {deadline_s:.0f} s; see {LOG_DIR}")


def _push_samples(base_url: str, token: str, samples: int) -> None:
    files = [
        ("files", (f"sample-{i}-{n}.dcm", data, "application/dicom"))
        for i in range(samples)
        for n, data in enumerate(synthetic_series(i))
    ]
    response = httpx.post(
        f"{base_url}/api/v1/uploads",
        files=files,
        data={"synthetic": "true"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    response.raise_for_status()


def run_demo(samples: int = 4) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until a child dies (one line on stderr, exit 1)."""
    previous = {signum: signal.signal(signum, _stop_on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        return _run(samples, children)
    except DemoStopped:
        return 0
    except (ChildDied, RuntimeError, httpx.HTTPError) as exc:  # a child died, not ready, samples refused
        print(f"error: the demo stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum in previous:  # a second Ctrl+C must not interrupt the cleanup
            signal.signal(signum, signal.SIG_IGN)
        _stop_children(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(samples: int, children: dict[str, subprocess.Popen[bytes]]) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    with unit_of_work(settings) as db:
        reader = create_token(db, role=Role.reader, name="demo-reader")
        ingest = create_token(db, role=Role.ingest, name="demo-ingest")
    base_url = f"http://{settings.host}:{settings.port}"
    _start_children(settings, children)
    _wait_ready(base_url, lambda: _check_children(children, settings))
    _push_samples(base_url, ingest, samples)
    print(_banner(base_url, reader, ingest), flush=True)
    while True:
        _check_children(children, settings)
        time.sleep(1)


def _banner(base_url: str, reader: str, ingest: str) -> str:
    return f"""
Sightline demo is running at {base_url}   (synthetic sample studies; research use only)

  Reader token:  {reader}
  Ingest token:  {ingest}

  Worklist:      curl -H 'Authorization: Bearer {reader}' {base_url}/api/v1/worklist
  Push a file:   curl -H 'Authorization: Bearer {ingest}' -F files=@image.dcm {base_url}/api/v1/uploads
  API docs:      {base_url}/docs
  Logs:          {LOG_DIR}/api.log, {LOG_DIR}/worker.log

Press Ctrl+C to stop.
"""
