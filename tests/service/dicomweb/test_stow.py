"""STOW-RS (PS3.18 §10.5): per-instance outcomes, DICOM JSON responses, statuses, limits and auth."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, dicom_variant, make_mr_dicom, mr_slice
from pydicom import Dataset
from pydicom.uid import MRImageStorage
from sqlalchemy import select

from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import Instance, Role
from service.dicomweb.schemas import FailureReason, failure_reason
from service.settings import Settings

BOUNDARY = "sightline-stow-0b1c"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
STUDY = "1.2.826.0.1.3680043.9001"
SERIES = f"{STUDY}.1"


def multipart(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n" for data in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(
    client: TestClient,
    body: bytes | Iterator[bytes],
    token: str | None,
    path: str = "/dicomweb/studies",
    **headers: str,
) -> httpx.Response:
    sent = {"Content-Type": CONTENT_TYPE, **(bearer(token) if token else {}), **headers}
    response: httpx.Response = client.post(path, content=body, headers=sent)
    return response


def store_response(response: httpx.Response) -> Dataset:
    """The body read back as DICOM JSON, as a STOW client would."""
    assert response.headers["content-type"] == "application/dicom+json"
    return Dataset.from_json(response.text)


def referenced(ds: Dataset) -> list[tuple[str, str]]:
    return [(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) for item in ds.get("ReferencedSOPSequence", [])]


def failed(ds: Dataset) -> list[tuple[str | None, int]]:
    return [(item.get("ReferencedSOPInstanceUID"), item.FailureReason) for item in ds.get("FailedSOPSequence", [])]


def stored_uids(settings: Settings) -> list[str]:
    with unit_of_work(settings) as db:
        return sorted(db.scalars(select(Instance.sop_instance_uid)))


def test_all_instances_stored_answer_200_with_every_reference(
    client: TestClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    slices = [mr_slice(STUDY, SERIES, n) for n in (1, 2)]
    response = stow(client, multipart(*slices), tokens[Role.ingest])
    assert response.status_code == 200, response.text
    ds = store_response(response)
    assert referenced(ds) == [(MRImageStorage, f"{SERIES}.1"), (MRImageStorage, f"{SERIES}.2")]
    assert "FailedSOPSequence" not in ds
    assert ds["ReferencedSOPSequence"].VR == "SQ"
    assert ds.ReferencedSOPSequence[0].RetrieveURL == f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1"
    assert stored_uids(settings) == [f"{SERIES}.1", f"{SERIES}.2"]


def test_a_truncated_instance_fails_alone_with_202(
    client: TestClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    good, bad = mr_slice(STUDY, SERIES, 1), mr_slice(STUDY, SERIES, 2)[:300]
    response = stow(client, multipart(good, bad), tokens[Role.ingest])
    assert response.status_code == 202, response.text
    ds = store_response(response)
    assert referenced(ds) == [(MRImageStorage, f"{SERIES}.1")]
    assert failed(ds) == [(None, FailureReason.CANNOT_UNDERSTAND)]
    assert ds.FailedSOPSequence[0]["FailureReason"].VR == "US"
    assert stored_uids(settings) == [f"{SERIES}.1"]


def test_no_instance_stored_answers_409(client: TestClient, settings: Settings, tokens: dict[Role, str]) -> None:
    unreadable = make_mr_dicom()[:300]
    response = stow(client, multipart(unreadable, b""), tokens[Role.ingest])
    assert response.status_code == 409
    assert failed(store_response(response)) == [(None, 0xC000), (None, 0xC000)]
    assert stored_uids(settings) == []


def test_a_resend_is_stored_once_and_a_changed_resend_fails(
    client: TestClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    original = mr_slice(STUDY, SERIES, 1)
    assert stow(client, multipart(original), tokens[Role.ingest]).status_code == 200
    again = stow(client, multipart(original), tokens[Role.ingest])
    assert again.status_code == 200
    assert referenced(store_response(again)) == [(MRImageStorage, f"{SERIES}.1")]
    changed = dicom_variant(original, PatientID="SOMEONE-ELSE")
    other_patient = mr_slice(STUDY, SERIES, 2, PatientID="SOMEONE-ELSE")
    conflict = stow(client, multipart(changed, other_patient), tokens[Role.ingest])
    assert conflict.status_code == 409
    ds = store_response(conflict)
    assert failed(ds) == [(f"{SERIES}.1", FailureReason.PROCESSING_FAILURE), (f"{SERIES}.2", 0x0110)]
    assert [item.ReferencedSOPClassUID for item in ds.FailedSOPSequence] == [MRImageStorage] * 2
    assert stored_uids(settings) == [f"{SERIES}.1"]


def test_an_instance_of_another_study_fails_on_the_study_url(
    client: TestClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    other_series = "1.2.826.0.1.3680043.9002.1"
    mine, theirs = mr_slice(STUDY, SERIES, 1), mr_slice("1.2.826.0.1.3680043.9002", other_series, 1)
    response = stow(client, multipart(mine, theirs), tokens[Role.ingest], path=f"/dicomweb/studies/{STUDY}")
    assert response.status_code == 202
    ds = store_response(response)
    assert referenced(ds) == [(MRImageStorage, f"{SERIES}.1")]
    assert failed(ds) == [(f"{other_series}.1", 0xC409)]
    assert stored_uids(settings) == [f"{SERIES}.1"]


def test_a_study_url_that_is_not_a_uid_is_refused(client: TestClient, tokens: dict[Role, str]) -> None:
    response = stow(client, multipart(make_mr_dicom()), tokens[Role.ingest], path="/dicomweb/studies/not-a-uid")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_a_part_of_another_media_type_fails_alone(client: TestClient, tokens: dict[Role, str]) -> None:
    body = multipart(mr_slice(STUDY, SERIES, 1))
    json_part = f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n[]\r\n".encode()
    bare_part = f"--{BOUNDARY}\r\n\r\n".encode() + mr_slice(STUDY, SERIES, 2) + b"\r\n"
    response = stow(client, json_part + bare_part + body, tokens[Role.ingest])
    assert response.status_code == 202
    ds = store_response(response)
    assert failed(ds) == [(None, FailureReason.CANNOT_UNDERSTAND)]
    assert [uid for _, uid in referenced(ds)] == [f"{SERIES}.2", f"{SERIES}.1"]


def test_a_chunked_body_without_content_length_is_stored(
    client: TestClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    body = multipart(mr_slice(STUDY, SERIES, 1), mr_slice(STUDY, SERIES, 2))
    response = stow(client, iter([body[:1000], body[1000:20000], body[20000:]]), tokens[Role.ingest])
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200
    assert stored_uids(settings) == [f"{SERIES}.1", f"{SERIES}.2"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_refused_and_nothing_is_stored(
    settings: Settings, tokens: dict[Role, str], chunked: bool
) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 4096})
    body = multipart(mr_slice(STUDY, SERIES, 1))
    with TestClient(create_app(small)) as client:
        response = stow(client, iter([body[:2048], body[2048:]]) if chunked else body, tokens[Role.ingest])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert stored_uids(settings) == []


def test_wrong_media_types_and_accept_headers_are_refused(client: TestClient, tokens: dict[Role, str]) -> None:
    body, token = multipart(make_mr_dicom()), tokens[Role.ingest]
    assert stow(client, body, token, **{"Content-Type": "application/dicom"}).status_code == 415
    json_root = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
    assert stow(client, body, token, **{"Content-Type": json_root}).json()["error"]["code"] == "unsupported_media_type"
    refused = stow(client, body, token, Accept="application/dicom+xml")
    assert (refused.status_code, refused.json()["error"]["code"]) == (406, "not_acceptable")
    assert stow(client, body, token, Accept="application/dicom+xml, application/json;q=0.5").status_code == 200


def test_a_body_without_parts_or_boundary_is_a_bad_request(client: TestClient, tokens: dict[Role, str]) -> None:
    empty = stow(client, f"--{BOUNDARY}--\r\n".encode(), tokens[Role.ingest])
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "malformed_multipart")
    cut_off = stow(client, multipart(make_mr_dicom())[:-20], tokens[Role.ingest])
    assert (cut_off.status_code, cut_off.json()["error"]["message"]) == (
        400,
        "the body ends without its closing boundary delimiter",
    )


def test_stow_needs_an_ingest_token(client: TestClient, settings: Settings, tokens: dict[Role, str]) -> None:
    body = multipart(make_mr_dicom())
    anonymous = stow(client, body, None)
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")
    assert stow(client, body, tokens[Role.reader], path=f"/dicomweb/studies/{STUDY}").status_code == 403
    assert stored_uids(settings) == []


def test_openapi_documents_the_stow_statuses(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "202", "400", "401", "403", "406", "409", "413", "415", "422"} <= set(responses), path
        assert "application/dicom+json" in responses["409"]["content"]


def test_junk_where_a_uid_should_be_is_not_echoed(client: TestClient, tokens: dict[Role, str]) -> None:
    """Even a part pydicom reads by force gets only well-formed UIDs in its failed item."""
    junk = dicom_variant(make_mr_dicom(), SOPInstanceUID="1.2.x", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    response = stow(client, multipart(junk), tokens[Role.ingest])
    assert response.status_code == 409
    item = store_response(response).FailedSOPSequence[0]
    assert "ReferencedSOPInstanceUID" not in item
    assert item.ReferencedSOPClassUID == MRImageStorage


@pytest.mark.parametrize(
    ("status_code", "code", "reason"),
    [
        (422, "unreadable_dicom", 0xC000),
        (422, "empty_file", 0xC000),
        (415, "unsupported_media_type", 0xC000),
        (422, "unsupported_transfer_syntax", 0xC122),
        (422, "inconsistent_pixel_data", 0xA900),
        (422, "invalid_uid", 0xA900),
        (413, "decompression_bomb", 0xA700),
        (503, "database_unavailable", 0xA700),
        (409, "instance_conflict", 0x0110),
        (409, "study_patient_mismatch", 0x0110),
        (500, None, 0x0110),
    ],
)
def test_every_refusal_maps_to_a_table_i2_2_failure_reason(status_code: int, code: str | None, reason: int) -> None:
    assert failure_reason(status_code, code) == reason
