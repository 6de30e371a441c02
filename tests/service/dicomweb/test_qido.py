"""QIDO-RS (PS3.18 §10.6): matching in SQL, counts, includefield, result objects, errors and auth."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import STOW_CONTENT_TYPE, add_result_object, bearer, mr_slice, stow_all, stow_body
from pydicom import Dataset

from service.db.tables import Role
from service.settings import Settings

STUDY_A = "1.2.826.0.1.3680043.9101"
STUDY_B = "1.2.826.0.1.3680043.9102"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def qido(client: TestClient, token: str, path: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    found: list[dict[str, Any]] = response.json()
    return found


def value(result: dict[str, Any], tag: str) -> Any:
    values = result[tag].get("Value")
    return values[0] if values and len(values) == 1 else values


@pytest.fixture()
def two_studies(client: TestClient, tokens: dict[Role, str]) -> None:
    a = [mr_slice(STUDY_A, f"{STUDY_A}.1", n) for n in (1, 2, 3)]
    a.append(mr_slice(STUDY_A, f"{STUDY_A}.2", 1, Modality="CT", SeriesNumber=2))
    b = [
        mr_slice(STUDY_B, f"{STUDY_B}.1", 1, PatientID="PAT-B", PatientName="Other^Person", StudyDate="20240115",
                 AccessionNumber="ACC-B")
    ]  # fmt: skip
    stow_all(client, tokens[Role.ingest], *a, *b)


@pytest.mark.usefixtures("two_studies")
def test_study_search_returns_viewer_attributes_and_sql_counts(client: TestClient, tokens: dict[Role, str]) -> None:
    found = qido(client, tokens[Role.reader], "/dicomweb/studies", PatientID="PAT-TEST-1")
    assert len(found) == 1
    study = found[0]
    assert value(study, "0020000D") == STUDY_A
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Test^Patient"}]}
    assert value(study, "00080020") == "20261101" and value(study, "00080050") == "ACC0001"
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert value(study, "00201206") == 2 and value(study, "00201208") == 4
    assert value(study, "00081190") == f"/dicomweb/studies/{STUDY_A}"


@pytest.mark.usefixtures("two_studies")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "test*"}, [STUDY_A]),
        ({"PatientName": "OTHER^PERS?N"}, [STUDY_B]),
        ({"PatientName": "Test"}, []),
        ({"StudyDate": "20240115"}, [STUDY_B]),
        ({"StudyDate": "20240101-20240131"}, [STUDY_B]),
        ({"StudyDate": "20250101-"}, [STUDY_A]),
        ({"StudyDate": "-20241231"}, [STUDY_B]),
        ({"00080020": "20240201-20240301"}, []),
        ({"ModalitiesInStudy": "CT"}, [STUDY_A]),
        ({"StudyInstanceUID": f"{STUDY_B},{STUDY_A}"}, [STUDY_A, STUDY_B]),
        ({"0020000D": f"{STUDY_B}\\1.2.3"}, [STUDY_B]),
        ({"AccessionNumber": "ACC-B"}, [STUDY_B]),
        ({"00100020": "PAT-*"}, [STUDY_A, STUDY_B]),
        ({"fuzzymatching": "true", "PatientID": "PAT-B"}, [STUDY_B]),
    ],
)
def test_study_matching(
    client: TestClient, tokens: dict[Role, str], params: dict[str, str], expected: list[str]
) -> None:
    found = qido(client, tokens[Role.reader], "/dicomweb/studies", **params)
    assert sorted(value(study, "0020000D") for study in found) == expected


@pytest.mark.usefixtures("two_studies")
def test_limit_and_offset_page_the_studies(client: TestClient, tokens: dict[Role, str]) -> None:
    first = qido(client, tokens[Role.reader], "/dicomweb/studies", limit="1")
    second = qido(client, tokens[Role.reader], "/dicomweb/studies", limit="1", offset="1")
    assert len(first) == len(second) == 1
    assert {value(first[0], "0020000D"), value(second[0], "0020000D")} == {STUDY_A, STUDY_B}


@pytest.mark.usefixtures("two_studies")
def test_series_search_counts_and_includefield(client: TestClient, tokens: dict[Role, str]) -> None:
    found = qido(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series")
    assert [(value(s, "0020000E"), value(s, "00080060"), value(s, "00201209")) for s in found] == [
        (f"{STUDY_A}.1", "MR", 3),
        (f"{STUDY_A}.2", "CT", 1),
    ]
    assert "00100020" not in found[0]  # a study attribute, fixed by the path
    included = qido(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series", includefield="00100020")
    assert value(included[0], "00100020") == "PAT-TEST-1"
    everything = qido(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series", includefield="all")
    assert value(everything[0], "00081030") == "MRI BRAIN W/O CONTRAST"
    ct = qido(client, tokens[Role.reader], "/dicomweb/series", Modality="CT")
    assert [value(s, "0020000E") for s in ct] == [f"{STUDY_A}.2"]
    assert value(ct[0], "00100020") == "PAT-TEST-1"  # study attributes: no study in the path


@pytest.mark.usefixtures("two_studies")
def test_instance_search(client: TestClient, tokens: dict[Role, str]) -> None:
    path = f"/dicomweb/studies/{STUDY_A}/series/{STUDY_A}.1/instances"
    found = qido(client, tokens[Role.reader], path)
    assert [value(i, "00080018") for i in found] == [f"{STUDY_A}.1.{n}" for n in (1, 2, 3)]
    assert [value(found[0], tag) for tag in ("00200013", "00280010", "00280011", "00280008")] == [1, 128, 128, 1]
    one = qido(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/instances", SOPInstanceUID=f"{STUDY_A}.1.2")
    assert [value(i, "00080018") for i in one] == [f"{STUDY_A}.1.2"]
    assert value(one[0], "0020000E") == f"{STUDY_A}.1"


@pytest.mark.usefixtures("two_studies")
def test_result_objects_are_listed_with_their_own_series(
    client: TestClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    series_uid, sop_uid, _ = add_result_object(settings, STUDY_A)
    study = qido(client, tokens[Role.reader], "/dicomweb/studies", StudyInstanceUID=STUDY_A)[0]
    assert value(study, "00201206") == 3 and value(study, "00201208") == 5
    assert study["00080061"]["Value"] == ["CT", "MR", "SR"]
    series = qido(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series", Modality="SR")
    assert [(value(s, "0020000E"), value(s, "00200011"), value(s, "0008103E")) for s in series] == [
        (series_uid, 900, "Sightline AI results")
    ]
    instances = qido(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series/{series_uid}/instances")
    assert [(value(i, "00080018"), value(i, "00080016")) for i in instances] == [(sop_uid, COMPREHENSIVE_SR)]


def test_png_uploads_are_not_dicom_objects(client: TestClient, tokens: dict[Role, str]) -> None:
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((32, 32), 128, np.uint8))
    assert ok
    files = {"files": ("slice.png", png.tobytes(), "image/png")}
    response = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest]))
    assert response.status_code in (200, 201, 202), response.text
    assert qido(client, tokens[Role.reader], "/dicomweb/studies") == []
    assert qido(client, tokens[Role.reader], "/dicomweb/series") == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Foo": "1"}, "invalid_query"),
        ({"SeriesDescription": "x"}, "invalid_query"),
        ({"FFFF0001": "x"}, "invalid_query"),
        ({"StudyDate": "2024-01"}, "invalid_query"),
        ({"StudyInstanceUID": "1.2.abc"}, "invalid_query"),
        ({"limit": "-1"}, "invalid_query"),
        ({"offset": "1" + "0" * 30}, "invalid_query"),  # refused at parsing, never reaches SQL
        ({"includefield": "NotAKeyword"}, "invalid_query"),
    ],
)
def test_bad_queries_are_400(client: TestClient, tokens: dict[Role, str], params: dict[str, str], code: str) -> None:
    response = client.get("/dicomweb/studies", params=params, headers=bearer(tokens[Role.reader]))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_instance_keys_are_refused_at_the_study_level(client: TestClient, tokens: dict[Role, str]) -> None:
    response = client.get("/dicomweb/studies", params={"SOPInstanceUID": "1.2"}, headers=bearer(tokens[Role.reader]))
    assert response.status_code == 400 and "SOPInstanceUID" in response.json()["error"]["message"]


def test_auth_and_accept(client: TestClient, tokens: dict[Role, str]) -> None:
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/series", headers=bearer(tokens[Role.ingest])).status_code == 403
    headers = {**bearer(tokens[Role.reader]), "Accept": "application/xml"}
    response: httpx.Response = client.get("/dicomweb/studies", headers=headers)
    assert response.status_code == 406


def test_no_match_is_200_with_an_empty_array(client: TestClient, tokens: dict[Role, str]) -> None:
    response = client.get("/dicomweb/studies", params={"PatientID": "nobody"}, headers=bearer(tokens[Role.reader]))
    assert response.status_code == 200 and response.json() == []


def test_stow_response_carries_retrieve_urls(client: TestClient, tokens: dict[Role, str]) -> None:
    response = client.post(
        "/dicomweb/studies", content=stow_body(mr_slice(STUDY_A, f"{STUDY_A}.1", 1)),
        headers={"Content-Type": STOW_CONTENT_TYPE, **bearer(tokens[Role.ingest])},
    )  # fmt: skip
    ds = Dataset.from_json(response.text)
    assert ds.RetrieveURL == f"/dicomweb/studies/{STUDY_A}"
    assert (
        ds.ReferencedSOPSequence[0].RetrieveURL
        == f"/dicomweb/studies/{STUDY_A}/series/{STUDY_A}.1/instances/{STUDY_A}.1.1"
    )
