"""``sightline demo``: the whole system on one machine with the embedded defaults.

Same code path as production: the API and a real Celery worker (with the reconciler beat
embedded) run as separate processes over SQLite, a SQLite-backed broker and local files.
The sample studies are synthetic drawings and say so in their patient name and description.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
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


def _processes(settings: Settings) -> dict[str, subprocess.Popen[bytes]]:
    worker = ["-m", "service.cli", "worker", "--pool=solo", "--beat", "--schedule", "./var/celerybeat-schedule"]
    return {
        "api": _spawn("api", ["-m", "service.cli", "serve"], settings),
        "worker": _spawn("worker", worker, settings),
    }


def _report_death(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, child in children.items():
        if child.poll() is not None:
            tail = (LOG_DIR / f"{name}.log").read_text(errors="replace")[-2000:]
            print(f"\nThe {name} process exited with {child.returncode}. Last lines of its log:\n{tail}", flush=True)


def _wait_ready(base_url: str, deadline_s: float = 180.0) -> None:
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API did not become ready at {base_url}")


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
    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    with unit_of_work(settings) as db:
        reader = create_token(db, role=Role.reader, name="demo-reader")
        ingest = create_token(db, role=Role.ingest, name="demo-ingest")
    base_url = f"http://{settings.host}:{settings.port}"
    children = _processes(settings)
    try:
        _wait_ready(base_url)
        _push_samples(base_url, ingest, samples)
        print(_banner(base_url, reader, ingest), flush=True)
        while all(child.poll() is None for child in children.values()):
            time.sleep(1)
        _report_death(children)
        return 1
    except (RuntimeError, httpx.HTTPError) as exc:  # not ready in time, or the samples were refused
        print(f"The demo could not start: {exc}", flush=True)
        _report_death(children)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children.values():
            child.wait(timeout=30)


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
