"""POST /api/v1/uploads on the embedded stack: SQLite built by Alembic, SQLite broker, local blobs."""

from __future__ import annotations

import io
import logging
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, dicom_variant, make_mr_dicom, make_settings, read_back
from kombu import Connection
from pydicom.encaps import encapsulate
from sqlalchemy import func, select

from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, Role, Series, Study
from service.settings import Settings
from service.storage import BlobStore

UPLOADS = "/api/v1/uploads"


def dicom_with(**changes: Any) -> bytes:
    """make_mr_dicom() with attributes changed (None deletes one), saved back to bytes."""
    return dicom_variant(make_mr_dicom(), **changes)


def raster(ext: str, width: int = 64, height: int = 48, value: int = 255) -> bytes:
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (20, 20), 10, (0, 0, value), -1)
    ok, encoded = cv2.imencode(ext, image)
    assert ok
    return encoded.tobytes()


def png_bomb() -> bytes:
    """A valid small PNG whose IHDR claims 100000 x 100000 pixels (CRC fixed so only size is wrong)."""
    data = bytearray(raster(".png"))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def post(client: TestClient, token: str, *files: tuple[str, bytes], **form: str) -> Any:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post(UPLOADS, files=parts, data=form, headers=bearer(token))


def row_counts(settings: Settings) -> tuple[int, int, int, int]:
    with unit_of_work(settings) as db:
        return tuple(  # type: ignore[return-value]
            db.scalar(select(func.count()).select_from(table)) for table in (Study, Series, Instance, AnalysisJob)
        )


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.storage_dir.rglob("*") if p.is_file()]


def broker_messages(settings: Settings) -> list[Any]:
    bodies = []
    with Connection(settings.broker_url) as conn:
        queue = conn.SimpleQueue("analysis")
        try:
            while True:
                message = queue.get(timeout=1)
                bodies.append(message.decode())
                message.ack()
        except Empty:
            pass
        queue.close()
    return bodies


@pytest.fixture()
def ingest(tokens: dict[Role, str]) -> str:
    return tokens[Role.ingest]


def test_dicom_upload_commits_rows_blob_and_broker_message(client: TestClient, ingest: str, settings: Settings) -> None:
    data = make_mr_dicom(study_uid="1.2.3.4", series_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6")
    response = post(client, ingest, ("slice.dcm", data))
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (1, 0)
    entry = body["instances"][0]
    assert entry["sop_instance_uid"] == "1.2.3.4.5.6"
    assert entry["study_instance_uid"] == "1.2.3.4"
    assert entry["duplicate"] is False
    with unit_of_work(settings) as db:
        instance = db.get_one(Instance, uuid.UUID(entry["instance_id"]))
        job = db.scalar(select(AnalysisJob).where(AnalysisJob.instance_id == instance.id))
        study = db.get_one(Study, instance.study_id)
        series = db.get_one(Series, instance.series_id)
        assert job is not None and str(job.id) == entry["job_id"]
        assert job.status is JobStatus.queued and job.enqueued_at is not None
        assert BlobStore(settings.storage_dir).path_for(instance.blob_key).read_bytes() == data
        assert (instance.blob_size, instance.rows, instance.columns, instance.frame_count) == (len(data), 128, 128, 1)
        assert instance.source_kind == "dicom"
        assert instance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"
        assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert instance.instance_number == 1
        assert (study.patient_id, study.patient_name, study.accession_number) == (
            "PAT-TEST-1",
            "Test^Patient",
            "ACC0001",
        )
        assert (str(study.study_date), study.study_time, study.modality) == ("2026-11-01", "101500", "MR")
        assert (study.body_part, study.description, study.synthetic) == ("BRAIN", "MRI BRAIN W/O CONTRAST", False)
        assert study.clinical_priority == 0 and study.status.value == "pending"
        assert (series.series_instance_uid, series.series_number, series.description) == ("1.2.3.4.5", 1, "AX T1")
    assert [m[0] for m in broker_messages(settings)] == [[entry["job_id"]]]


def test_bad_optional_values_become_none_and_strings_are_cut(
    client: TestClient, ingest: str, settings: Settings
) -> None:
    data = dicom_with(StudyDate="20261399", SeriesNumber="99999999999", StudyDescription="X" * 64, Modality=None)
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(Study)) == 0
    assert post(client, ingest, ("odd.dcm", data)).status_code == 202
    with unit_of_work(settings) as db:
        study = db.scalars(select(Study)).one()
        series = db.scalars(select(Series)).one()
        assert (study.study_date, study.modality, series.series_number) == (None, None, None)
        assert study.description == "X" * 64


def test_same_sop_twice_is_one_instance_one_job_one_message(
    client: TestClient, ingest: str, settings: Settings
) -> None:
    data = make_mr_dicom()
    first = post(client, ingest, ("a.dcm", data)).json()["instances"][0]
    again = post(client, ingest, ("a-again.dcm", data))
    assert again.status_code == 202
    second = again.json()["instances"][0]
    assert second["duplicate"] is True
    assert {k: second[k] for k in ("instance_id", "job_id", "sop_instance_uid", "study_instance_uid")} == {
        k: first[k] for k in ("instance_id", "job_id", "sop_instance_uid", "study_instance_uid")
    }
    assert again.json()["duplicates"] == 1
    assert row_counts(settings) == (1, 1, 1, 1)
    assert len(stored_files(settings)) == 1
    assert [m[0] for m in broker_messages(settings)] == [[first["job_id"]]]


def test_png_upload_takes_form_fields_and_generated_uids(client: TestClient, ingest: str, settings: Settings) -> None:
    response = post(
        client, ingest, ("photo.png", raster(".png")),
        patient_id="P-77", patient_name="Doe^Jane", study_description="Outside film", clinical_priority="stat",
    )  # fmt: skip
    assert response.status_code == 202
    entry = response.json()["instances"][0]
    with unit_of_work(settings) as db:
        study = db.scalars(select(Study)).one()
        instance = db.scalars(select(Instance)).one()
        assert study.study_instance_uid == entry["study_instance_uid"]
        assert (study.patient_id, study.patient_name, study.description) == ("P-77", "Doe^Jane", "Outside film")
        assert (study.modality, study.clinical_priority, study.synthetic) == ("OT", 2, False)
        assert (instance.source_kind, instance.rows, instance.columns, instance.sop_class_uid) == ("png", 48, 64, None)
    assert entry["sop_instance_uid"].startswith("2.25.") or entry["sop_instance_uid"][0].isdigit()


def test_synthetic_field_flags_the_new_studies(client: TestClient, ingest: str, settings: Settings) -> None:
    assert post(client, ingest, ("a.dcm", make_mr_dicom()), synthetic="true").status_code == 202
    assert post(client, ingest, ("b.dcm", make_mr_dicom())).status_code == 202
    with unit_of_work(settings) as db:
        flags = sorted(study.synthetic for study in db.scalars(select(Study)))
    assert flags == [False, True]


def test_jpeg_uploads_group_into_the_named_study(client: TestClient, ingest: str, settings: Settings) -> None:
    for priority, picture in (("urgent", raster(".jpg")), ("routine", raster(".jpg", value=90))):
        response = post(client, ingest, ("x.jpg", picture), study_instance_uid="1.2.40.7", clinical_priority=priority)
        assert response.status_code == 202
        assert response.json()["instances"][0]["study_instance_uid"] == "1.2.40.7"
    with unit_of_work(settings) as db:
        study = db.scalars(select(Study)).one()
        kinds = db.scalars(select(Instance.source_kind)).all()
        assert study.clinical_priority == 1  # a later routine upload never lowers it
    assert kinds == ["jpeg", "jpeg"]


def test_multi_file_request_stores_every_file(client: TestClient, ingest: str, settings: Settings) -> None:
    study = "1.2.826.0.1.1"
    files = [
        ("a.dcm", make_mr_dicom(study_uid=study, series_uid="1.2.826.0.1.1.1", seed=1)),
        ("b.dcm", make_mr_dicom(study_uid=study, series_uid="1.2.826.0.1.1.1", seed=2)),
        ("c.png", raster(".png")),
    ]
    response = post(client, ingest, *files)
    assert response.status_code == 202
    entries = response.json()["instances"]
    assert [e["study_instance_uid"] == study for e in entries] == [True, True, False]
    assert row_counts(settings) == (2, 2, 3, 3)
    assert len(stored_files(settings)) == 3
    assert sorted(m[0][0] for m in broker_messages(settings)) == sorted(e["job_id"] for e in entries)


TRUNCATED = make_mr_dicom()[:-5000]  # cut inside (7FE0,0010) Pixel Data
BAD_INPUTS = {
    "zero_bytes": ([("empty.dcm", b"")], 422, "empty_file"),
    "random_bytes": ([("noise.bin", np.random.default_rng(1).bytes(4096))], 415, "unsupported_media_type"),
    "truncated_dicom": ([("cut.dcm", TRUNCATED)], 422, "inconsistent_pixel_data"),
    "truncated_header": ([("cut.dcm", make_mr_dicom()[:300])], 422, "unreadable_dicom"),
    "dicom_rows_lie": ([("lie.dcm", dicom_with(Rows=512))], 422, "inconsistent_pixel_data"),
    "dicom_bad_uid": ([("uid.dcm", dicom_with(StudyInstanceUID="1.02.x"))], 422, "invalid_uid"),
    "dicom_missing_uid": ([("uid.dcm", dicom_with(SeriesInstanceUID=None))], 422, "invalid_uid"),
    "png_bomb": ([("bomb.png", png_bomb())], 413, "decompression_bomb"),
    "corrupt_png": ([("bad.png", raster(".png")[:40] + b"\0" * 60)], 422, "unreadable_image"),
    "good_then_bad": ([("ok.dcm", make_mr_dicom()), ("ok.png", raster(".png")), ("x.dcm", b"")], 422, "empty_file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_refuses_the_whole_request_and_leaves_nothing(
    client: TestClient, ingest: str, settings: Settings, case: str
) -> None:
    files, status, code = BAD_INPUTS[case]
    response = post(client, ingest, *files)
    assert response.status_code == status, response.json()
    assert response.json()["error"]["code"] == code
    index = len(files) - 1
    message = response.json()["error"]["message"]
    assert message.startswith(f"files[{index}]: ")
    assert all(name not in message for name, _ in files)  # filenames can carry patient data
    assert row_counts(settings) == (0, 0, 0, 0)
    assert stored_files(settings) == []
    assert broker_messages(settings) == []


def test_a_bad_file_after_a_duplicate_keeps_the_earlier_upload_intact(
    client: TestClient, ingest: str, settings: Settings
) -> None:
    data = make_mr_dicom()
    assert post(client, ingest, ("a.dcm", data)).status_code == 202
    broker_messages(settings)
    response = post(client, ingest, ("a.dcm", data), ("new.dcm", make_mr_dicom(seed=5)), ("bad", b"junk" * 50))
    assert response.status_code == 415
    assert row_counts(settings) == (1, 1, 1, 1)
    assert len(stored_files(settings)) == 1
    assert broker_messages(settings) == []


def test_missing_files_field_is_a_validation_error(client: TestClient, ingest: str) -> None:
    response = client.post(UPLOADS, data={"patient_id": "x"}, headers=bearer(ingest))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "files" in response.json()["error"]["message"]


def test_invalid_form_study_uid_is_refused(client: TestClient, ingest: str, settings: Settings) -> None:
    response = post(client, ingest, ("a.png", raster(".png")), study_instance_uid="not-a-uid")
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_uid")
    assert row_counts(settings) == (0, 0, 0, 0)


@pytest.fixture()
def small_client(tmp_path: Path, settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    small = make_settings(tmp_path, max_upload_bytes=20_000)
    with TestClient(create_app(small)) as test_client:
        yield test_client, small


def test_oversize_body_with_content_length_is_413(small_client: tuple[TestClient, Settings], ingest: str) -> None:
    client, small = small_client
    response = post(client, ingest, ("big.dcm", make_mr_dicom()))  # 32 KiB of pixels
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert row_counts(small) == (0, 0, 0, 0) and stored_files(small) == []


def test_oversize_chunked_body_without_content_length_is_413(
    small_client: tuple[TestClient, Settings], ingest: str
) -> None:
    client, small = small_client
    boundary = "sightline-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.dcm"\r\n\r\n'.encode()
    body = head + make_mr_dicom() + f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {**bearer(ingest), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post(UPLOADS, content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert row_counts(small) == (0, 0, 0, 0) and stored_files(small) == []


def test_files_are_counted_while_read(tmp_path: Path) -> None:
    from service.ingest.errors import UploadTooLarge
    from service.ingest.reading import NamedUpload, read_all

    uploads = [NamedUpload(0, io.BytesIO(b"x" * 600)), NamedUpload(1, io.BytesIO(b"y" * 600))]
    with pytest.raises(UploadTooLarge, match=r"^files\[1\]: the upload exceeds the 1000-byte limit$"):
        read_all(uploads, 1000)
    assert read_all([NamedUpload(0, io.BytesIO(b"x" * 600))], 1000) == [b"x" * 600]


@pytest.mark.parametrize(("role", "status"), [(None, 401), (Role.reader, 403), (Role.ingest, 202), (Role.admin, 202)])
def test_upload_needs_the_ingest_role(
    client: TestClient, tokens: dict[Role, str], role: Role | None, status: int
) -> None:
    headers = bearer(tokens[role]) if role else {}
    files = [("files", ("a.dcm", make_mr_dicom(), "application/dicom"))]
    response = client.post(UPLOADS, files=files, headers=headers)
    assert response.status_code == status
    if status >= 400:
        assert response.json()["error"]["code"] == {401: "unauthenticated", 403: "forbidden"}[status]


def test_authentication_comes_before_the_body_is_read(
    small_client: tuple[TestClient, Settings], tokens: dict[Role, str]
) -> None:
    """A stranger's oversize upload is refused as 401/403, not read up to the size limit first."""
    client, _ = small_client
    files = [("files", ("big.dcm", make_mr_dicom(), "application/dicom"))]
    assert client.post(UPLOADS, files=files).status_code == 401
    assert client.post(UPLOADS, files=files, headers=bearer("sl_not-a-token")).status_code == 401
    assert client.post(UPLOADS, files=files, headers=bearer(tokens[Role.reader])).status_code == 403


def test_patient_data_never_reaches_the_logs(client: TestClient, ingest: str, caplog: pytest.LogCaptureFixture) -> None:
    name, pid = "Zyxwvut^Qponmlk", "PID-8A7B6C5D"
    good = make_mr_dicom(patient_name=name, patient_id=pid)
    bad = dicom_with(PatientName=name, PatientID=pid, Rows=512)
    with caplog.at_level(logging.DEBUG):
        assert post(client, ingest, ("good.dcm", good)).status_code == 202
        assert post(client, ingest, ("good.dcm", good)).status_code == 202
        assert post(client, ingest, ("bad.dcm", bad)).status_code == 422
        assert post(client, ingest, ("p.png", raster(".png")), patient_name=name, patient_id=pid).status_code == 202
        assert post(client, ingest, ("p.png", b""), patient_name=name, patient_id=pid).status_code == 422
    assert any(r.getMessage() == "instance stored" for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        for secret in ("Zyxwvut", "Qponmlk", pid):
            assert secret not in text, record.getMessage()


def test_dicom_without_preamble_is_accepted(client: TestClient, ingest: str, settings: Settings) -> None:
    ds = read_back(make_mr_dicom(sop_uid="1.2.3.77"))
    out = io.BytesIO()
    ds.preamble = None
    ds.save_as(out, enforce_file_format=False)
    assert out.getvalue()[128:132] != b"DICM"
    response = post(client, ingest, ("raw.dcm", out.getvalue()))
    assert response.status_code == 202
    assert response.json()["instances"][0]["sop_instance_uid"] == "1.2.3.77"


def test_a_series_uid_reused_in_another_study_is_409(client: TestClient, ingest: str, settings: Settings) -> None:
    assert post(client, ingest, ("a.dcm", make_mr_dicom(study_uid="1.2.8", series_uid="1.2.8.1"))).status_code == 202
    response = post(client, ingest, ("b.dcm", make_mr_dicom(study_uid="1.2.9", series_uid="1.2.8.1", seed=3)))
    assert (response.status_code, response.json()["error"]["code"]) == (409, "conflict")
    assert response.json()["error"]["message"].startswith("files[0]: (0020,000E)")
    assert row_counts(settings) == (1, 1, 1, 1)
    assert len(stored_files(settings)) == 1


def test_a_refusal_never_echoes_the_filename(client: TestClient, ingest: str) -> None:
    response = post(client, ingest, ("ok.dcm", make_mr_dicom()), ("Doe^Jane MRN-4711.dcm", b""))
    assert (response.status_code, response.json()["error"]["message"]) == (422, "files[1]: the file is empty (0 bytes)")


def test_a_duplicate_raises_its_studys_priority(client: TestClient, ingest: str, settings: Settings) -> None:
    data = make_mr_dicom(study_uid="1.2.61")
    assert post(client, ingest, ("a.dcm", data)).status_code == 202
    again = post(client, ingest, ("a.dcm", data), clinical_priority="stat")
    assert again.status_code == 202 and again.json()["duplicates"] == 1
    assert post(client, ingest, ("a.dcm", data), clinical_priority="urgent").status_code == 202
    with unit_of_work(settings) as db:
        assert db.scalars(select(Study.clinical_priority)).one() == 2  # raised by the duplicate, never lowered


def dicom_for(patient_id: str, *, study_uid: str, seed: int) -> bytes:
    return make_mr_dicom(study_uid=study_uid, series_uid=f"{study_uid}.{seed}", patient_id=patient_id, seed=seed)


@pytest.mark.parametrize("second", ["dicom", "png", "same_request"])
def test_a_study_uid_of_another_patient_is_409_and_stores_nothing(
    client: TestClient, ingest: str, settings: Settings, second: str
) -> None:
    uid, first_pid, other_pid = "1.2.62", "PID-FIRST-81", "PID-OTHER-92"
    if second == "same_request":
        files = [
            ("a.dcm", dicom_for(first_pid, study_uid=uid, seed=1)),
            ("b.dcm", dicom_for(other_pid, study_uid=uid, seed=2)),
        ]
        response = post(client, ingest, *files)
        expected_rows: tuple[int, ...] = (0, 0, 0, 0)
    else:
        assert post(client, ingest, ("a.dcm", dicom_for(first_pid, study_uid=uid, seed=1))).status_code == 202
        broker_messages(settings)
        if second == "dicom":
            response = post(client, ingest, ("b.dcm", dicom_for(other_pid, study_uid=uid, seed=2)))
        else:
            response = post(client, ingest, ("b.png", raster(".png")), study_instance_uid=uid, patient_id=other_pid)
        expected_rows = (1, 1, 1, 1)
    assert (response.status_code, response.json()["error"]["code"]) == (409, "study_patient_mismatch")
    message = response.json()["error"]["message"]
    assert first_pid not in message and other_pid not in message
    assert row_counts(settings) == expected_rows
    assert len(stored_files(settings)) == expected_rows[2]
    assert broker_messages(settings) == []


def test_the_same_patient_or_an_unnamed_one_joins_the_study(
    client: TestClient, ingest: str, settings: Settings
) -> None:
    assert post(client, ingest, ("a.dcm", dicom_for("PID-1", study_uid="1.2.63", seed=1))).status_code == 202
    assert post(client, ingest, ("b.dcm", dicom_for("PID-1", study_uid="1.2.63", seed=2))).status_code == 202
    assert post(client, ingest, ("c.png", raster(".png")), study_instance_uid="1.2.63").status_code == 202
    assert row_counts(settings) == (1, 3, 3, 3)


def mpeg2_dicom() -> bytes:
    """make_mr_dicom() relabelled as MPEG2 Main Profile (PS3.5 §8.2.5) with encapsulated junk."""
    ds = read_back(make_mr_dicom())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"junk" * 64])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_an_unsupported_transfer_syntax_is_refused_with_nothing_stored(
    client: TestClient, ingest: str, settings: Settings
) -> None:
    response = post(client, ingest, ("ok.dcm", make_mr_dicom()), ("video.dcm", mpeg2_dicom()))
    assert response.status_code == 422, response.json()
    assert response.json()["error"]["code"] == "unsupported_transfer_syntax"
    assert response.json()["error"]["message"].startswith("files[1]: ")
    assert row_counts(settings) == (0, 0, 0, 0)
    assert stored_files(settings) == []
    assert broker_messages(settings) == []
