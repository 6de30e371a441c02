"""What is stored but never scored, and what a re-send with other content gets (409)."""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
from fastapi.testclient import TestClient
from helpers import bearer, dicom_variant, mr_slice, read_back, structured_report
from pydicom.uid import CTImageStorage, RLELossless, SecondaryCaptureImageStorage
from sqlalchemy import func, select

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, Role, Study, StudyStatus
from service.settings import Settings
from service.storage import BlobStore


def upload(client: TestClient, token: str, *files: bytes, **form: str) -> Any:
    parts = [("files", (f"{i}.dcm", data, "application/octet-stream")) for i, data in enumerate(files)]
    return client.post("/api/v1/uploads", files=parts, data=form, headers=bearer(token))


def counts(settings: Settings) -> tuple[int, int]:
    with unit_of_work(settings) as db:
        return (
            int(db.scalar(select(func.count()).select_from(Instance)) or 0),
            int(db.scalar(select(func.count()).select_from(AnalysisJob)) or 0),
        )


def test_out_of_scope_objects_are_stored_with_reasons_and_get_no_job(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    study = "1.2.826.0.1.7001"
    files = [
        mr_slice(study, f"{study}.1", 1),
        mr_slice(study, f"{study}.2", 1, Modality="CT", SOPClassUID=CTImageStorage),
        mr_slice(study, f"{study}.3", 1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        mr_slice(study, f"{study}.4", 1, SOPClassUID=SecondaryCaptureImageStorage),
        structured_report(study),
    ]
    response = upload(client, tokens[Role.ingest], *files)
    assert response.status_code == 202, response.json()
    reasons = [item["not_applicable_reason"] for item in response.json()["instances"]]
    assert reasons[0] is None
    assert "modality CT" in reasons[1] and "localizer" in reasons[2] and "SOP class" in reasons[3]
    assert "no pixel data" in reasons[4]
    jobs = [item["job_id"] for item in response.json()["instances"]]
    assert jobs[0] is not None and jobs[1:] == [None] * 4
    assert counts(settings) == (5, 1)
    detail = client.get(f"/api/v1/studies/{study}", headers=bearer(tokens[Role.reader])).json()
    shown = {i["sop_instance_uid"]: i["not_applicable_reason"] for s in detail["series"] for i in s["instances"]}
    assert len(shown) == 5 and sum(reason is None for reason in shown.values()) == 1


def test_a_study_with_nothing_applicable_is_not_applicable_and_never_scored(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    ct_study, sr_study = "1.2.826.0.1.7002", "1.2.826.0.1.7003"
    ct = mr_slice(ct_study, f"{ct_study}.1", 1, Modality="CT", SOPClassUID=CTImageStorage)
    assert upload(client, tokens[Role.ingest], ct).status_code == 202
    assert upload(client, tokens[Role.ingest], structured_report(sr_study)).status_code == 202
    with unit_of_work(settings) as db:
        for study in db.scalars(select(Study)):
            assert (study.status, study.triage_score, study.predicted_label) == (StudyStatus.not_applicable, None, None)
    rows = client.get("/api/v1/worklist", headers=bearer(tokens[Role.reader])).json()["items"]
    assert {row["status"] for row in rows} == {"not_applicable"}


def test_an_identical_resend_is_a_duplicate_even_recompressed(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    study = "1.2.826.0.1.7004"
    original = mr_slice(study, f"{study}.1", 1, lesion=True)
    assert upload(client, tokens[Role.ingest], original).json()["accepted"] == 1
    assert upload(client, tokens[Role.ingest], original).json()["duplicates"] == 1
    ds = read_back(original)  # the same pixels, another transfer syntax, the same SOP Instance UID
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    again = upload(client, tokens[Role.ingest], out.getvalue())
    assert again.status_code == 202 and again.json()["duplicates"] == 1
    assert counts(settings) == (1, 1)


def test_a_resend_with_other_pixels_or_patient_is_a_conflict_and_changes_nothing(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    study = "1.2.826.0.1.7005"
    original = mr_slice(study, f"{study}.1", 1)
    assert upload(client, tokens[Role.ingest], original).status_code == 202
    stored_files = sorted(p for p in settings.storage_dir.rglob("*") if p.is_file())
    other_pixels = mr_slice(study, f"{study}.1", 1, lesion=True)
    other_patient = dicom_variant(original, PatientID="SOMEONE-ELSE")
    for index, changed in enumerate((other_pixels, other_patient)):
        response = upload(client, tokens[Role.ingest], mr_slice(study, f"{study}.1", 2), changed)
        assert response.status_code == 409, index
        error = response.json()["error"]
        assert error["code"] == "instance_conflict"
        assert error["message"].startswith("files[1]:")
        assert "SOMEONE-ELSE" not in error["message"]
    assert counts(settings) == (1, 1)  # the other file of the refused requests was not stored either
    assert sorted(p for p in settings.storage_dir.rglob("*") if p.is_file()) == stored_files
    with unit_of_work(settings) as db:
        key = db.scalars(select(Instance.blob_key)).one()
    assert BlobStore(settings.storage_dir).get(key) == original


def test_png_resends_are_idempotent_by_content_and_by_key(
    client: TestClient, tokens: dict[Role, str], settings: Settings
) -> None:
    picture = np.zeros((160, 160), np.uint8)
    cv2.circle(picture, (80, 80), 60, 120, -1)
    png = cv2.imencode(".png", picture)[1].tobytes()
    first = upload(client, tokens[Role.ingest], png, patient_id="P-9")
    again = upload(client, tokens[Role.ingest], png, patient_id="P-9")
    assert first.json()["accepted"] == 1 and again.json()["duplicates"] == 1
    assert first.json()["instances"][0]["study_instance_uid"] == again.json()["instances"][0]["study_instance_uid"]
    other_patient = upload(client, tokens[Role.ingest], png, patient_id="P-10")
    assert other_patient.json()["accepted"] == 1  # the same picture for another patient is another instance
    headers = {**bearer(tokens[Role.ingest]), "Idempotency-Key": "pacs-batch-42"}
    parts = [("files", ("a.png", png, "image/png"))]
    keyed = [client.post("/api/v1/uploads", files=parts, headers=headers).json() for _ in range(2)]
    assert keyed[0]["accepted"] == 1 and keyed[1]["duplicates"] == 1
    assert counts(settings) == (3, 3)
