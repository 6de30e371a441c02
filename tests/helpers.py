"""Plain helper functions for tests (factories, auth headers). Import as ``from helpers import ...``."""

from __future__ import annotations

import io
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ComprehensiveSRStorage as COMPREHENSIVE_SR
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy import create_engine, select, text

from models.inference import Classifier
from service.auth.tokens import create_token
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, JobStatus, ResultKind, ResultObject, Role, Study
from service.settings import Settings
from service.storage import BlobStore
from worker.pipeline import Outcome, analyse_job

PG_ADMIN_URL = os.environ.get("SIGHTLINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
StartListener = Callable[[Settings], int]  # the ``start_listener`` fixture: settings in, port out

REDIS_URL = os.environ.get("SIGHTLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'sightline.db'}",
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "storage_dir": tmp_path / "blobs",
        "model_cache_dir": Path(os.environ.get("SIGHTLINE_TEST_MODEL_CACHE", tmp_path / "model-cache")),
        "log_json": False,
        "series_quiet_seconds": 0.0,  # series complete once their jobs are done, unless a test sets a quiet period
    }
    values.update(overrides)
    settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
    settings.ensure_dirs()
    return settings


def issue_token(settings: Settings, role: Role) -> str:
    with unit_of_work(settings) as db:
        return create_token(db, role=role, name=f"test-{role.value}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_mr_dicom(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT-TEST-1",
    patient_name: str = "Test^Patient",
    size: int = 128,
    lesion: tuple[int, int, int] | None = (40, 48, 14),
    seed: int = 0,
) -> bytes:
    """A small synthetic MR slice (16-bit, explicit VR LE) with an optional bright disc (x, y, r)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    head = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (size * 0.42) ** 2
    pixels = (head * 600 + rng.normal(0, 20, (size, size))).clip(0, None)
    if lesion is not None:
        lx, ly, lr = lesion
        pixels[((xx - lx) ** 2 + (yy - ly) ** 2) < lr**2] += 900
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = "ACC0001"
    ds.StudyDate = date(2026, 11, 1).strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.Modality = "MR"
    ds.BodyPartExamined = "BRAIN"
    ds.StudyDescription = "MRI BRAIN W/O CONTRAST"
    ds.SeriesDescription = "AX T1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read_back(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def services_available() -> bool:
    """PostgreSQL and Redis both answer on 127.0.0.1 (the integration tests' and bench's services)."""
    for port in (5432, 6379):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
    return True


@contextmanager
def scratch_pg_database(prefix: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped (connections and all) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def dicom_variant(data: bytes, **changes: object) -> bytes:
    """A DICOM file with attributes changed (None deletes one), saved back to bytes."""
    ds = read_back(data)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def mr_slice(study_uid: str, series_uid: str, number: int, *, lesion: bool = False, **changes: object) -> bytes:
    """Slice ``number`` of an axial stack: 5 mm apart along z, Instance Number ``number``."""
    data = make_mr_dicom(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=f"{series_uid}.{number}",
        lesion=(60, 64, 16) if lesion else None,
        seed=number,
    )
    values: dict[str, object] = {
        "InstanceNumber": number,
        "ImagePositionPatient": [0.0, 0.0, 5.0 * number],
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "PixelSpacing": [0.9, 0.9],
        "ImageType": ["ORIGINAL", "PRIMARY", "M"],
    }
    values.update(changes)
    return dicom_variant(data, **values)


BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_IMAGE_PIXEL_MODULE = (
    "PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation",
)  # fmt: skip


def structured_report(study_uid: str) -> bytes:
    """An SR-like object without pixel data (series ``.99`` of the study)."""
    return dicom_variant(
        make_mr_dicom(study_uid=study_uid, series_uid=f"{study_uid}.99", sop_uid=f"{study_uid}.99.1"),
        SOPClassUID=BASIC_TEXT_SR,
        Modality="SR",
        **dict.fromkeys(_IMAGE_PIXEL_MODULE),
    )


def upload(client: TestClient, token: str, *files: bytes) -> None:
    """POST DICOM files to the upload API; they must all be accepted."""
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    response = client.post("/api/v1/uploads", files=parts, headers=bearer(token))
    assert response.status_code == 202, response.json()


def run_queued(settings: Settings, classifier: Classifier) -> int:
    """Run every queued job in this process, as a worker would; how many ran."""
    with unit_of_work(settings) as db:
        queued = list(db.scalars(select(AnalysisJob.id).where(AnalysisJob.status == JobStatus.queued)))
    for job_id in queued:
        assert analyse_job(job_id, settings=settings, classifier=classifier, worker_name="w") is Outcome.succeeded
    return len(queued)


def sr_blob(study_uid: str, series_uid: str, sop_uid: str) -> bytes:
    """A small valid SR-like dataset, as a result object would be stored."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 900, 1
    ds.SeriesDescription = "Sightline AI results"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def add_result_object(settings: Settings, study_uid: str) -> tuple[str, str, bytes]:
    """Store a small SR as a result object of the study, as the worker would; (series, SOP, bytes)."""
    series_uid, sop_uid = f"{study_uid}.900", f"{study_uid}.900.1"
    data = sr_blob(study_uid, series_uid, sop_uid)
    key, _ = BlobStore(settings.storage_dir).put(data)
    with unit_of_work(settings) as db:
        study = db.query(Study).filter_by(study_instance_uid=study_uid).one()
        db.add(
            ResultObject(
                study_id=study.id, generation=1, kind=ResultKind.sr, sop_class_uid=COMPREHENSIVE_SR,
                sop_instance_uid=sop_uid, series_instance_uid=series_uid, blob_key=key, blob_size=len(data),
            )
        )  # fmt: skip
    return series_uid, sop_uid, data


STOW_BOUNDARY = "sightline-test-stow"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{STOW_BOUNDARY}"'


def stow_body(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    """A STOW-RS request body (PS3.18 §10.5): one part per instance, boundary ``STOW_BOUNDARY``."""
    head = f"--{STOW_BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode()
    return b"".join(head + data + b"\r\n" for data in parts) + f"--{STOW_BOUNDARY}--\r\n".encode()


def stow_all(client: TestClient, token: str, *parts: bytes) -> None:
    """STOW-RS every part into the app behind ``client``; all must be stored (200)."""
    headers = {"Content-Type": STOW_CONTENT_TYPE, **bearer(token)}
    response = client.post("/dicomweb/studies", content=stow_body(*parts), headers=headers)
    assert response.status_code == 200, response.text


def grey_mr_dataset(side: int) -> Dataset:
    """A square 16-bit (12 stored) MR header with rescale and window, without pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.WindowCenter, ds.WindowWidth = 600, 2400
    return ds
