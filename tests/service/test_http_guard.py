"""Client errors stay client errors: text the database cannot store is a 422 naming the
parameter (never a 503 that clients retry for ever), refused values are 422, and methods the
API does not serve are 405 with ``Allow``."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, issue_token, make_mr_dicom
from PIL import Image
from sqlalchemy import event
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from service.app import create_app
from service.db.session import session_factory
from service.db.tables import Role
from service.http_guard import text_problem
from service.settings import Settings

BACKENDS = ["settings", pytest.param("pg_settings", marks=pytest.mark.integration)]

# (method, url, the parameter the message must name)
NUL_IN_QUERY = [
    ("GET", "/api/v1/worklist?patient_id=MRN%0042", "query parameter 'patient_id' contains a NUL byte"),
    ("GET", "/api/v1/worklist?limit=10&status=%00", "query parameter 'status' contains a NUL byte"),
    ("GET", "/dicomweb/studies?PatientID=A%00B", "query parameter 'PatientID' contains a NUL byte"),
    ("GET", "/dicomweb/workitems?PatientID=%00", "query parameter 'PatientID' contains a NUL byte"),
    ("GET", "/api/v1/audit?study_uid=1.2%00", "query parameter 'study_uid' contains a NUL byte"),
    ("GET", "/healthz?probe=%00", "query parameter 'probe' contains a NUL byte"),
]
NUL_IN_PATH = [
    ("GET", "/api/v1/studies/1.2%003", "path parameter 'study_uid' contains a NUL byte"),
    ("POST", "/api/v1/studies/1.2%003/claim", "path parameter 'study_uid' contains a NUL byte"),
    ("GET", "/api/v1/instances/1.2%00/overlay.png", "path parameter 'sop_uid' contains a NUL byte"),
    ("GET", "/dicomweb/studies/1%00/series/2/metadata", "path parameter 'study' contains a NUL byte"),
    ("GET", "/dicomweb/studies/1/series/2%00", "path parameter 'series' contains a NUL byte"),
    ("GET", "/dicomweb/workitems/1.2%00", "path parameter 'workitem' contains a NUL byte"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, dict[Role, str], Settings]]:
    settings: Settings = request.getfixturevalue(request.param)
    tokens = {role: issue_token(settings, role) for role in Role}
    with TestClient(create_app(settings)) as client:
        yield client, tokens, settings


def assert_invalid_parameter(response: object, message: str) -> None:
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    assert response.json() == {"error": {"code": "invalid_parameter", "message": message}}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method", "url", "message"), NUL_IN_QUERY + NUL_IN_PATH)
def test_a_nul_byte_in_a_query_or_path_parameter_is_422_naming_it(
    backend: tuple[TestClient, dict[Role, str], Settings], method: str, url: str, message: str
) -> None:
    client, tokens, _ = backend
    assert_invalid_parameter(client.request(method, url, headers=bearer(tokens[Role.admin])), message)


def test_the_guard_answers_before_authentication(client: TestClient) -> None:
    """No token, no session, no database: the request is refused on its face."""
    assert_invalid_parameter(
        client.get("/api/v1/worklist?patient_id=%00"), "query parameter 'patient_id' contains a NUL byte"
    )


def test_a_nul_byte_in_the_idempotency_key_is_422_naming_the_header(
    backend: tuple[TestClient, dict[Role, str], Settings],
) -> None:
    client, tokens, _ = backend
    files = [("files", ("a.png", b"\x89PNG\r\n\x1a\n", "image/png"))]
    headers = bearer(tokens[Role.ingest]) | {"Idempotency-Key": "key\x00one"}
    response = client.post("/api/v1/uploads", files=files, headers=headers)
    assert_invalid_parameter(response, "header 'Idempotency-Key' contains a NUL byte")


def test_a_nul_byte_in_a_form_field_is_a_client_error_on_every_backend(
    backend: tuple[TestClient, dict[Role, str], Settings],
) -> None:
    """Form fields are the body, past the guard: ingest may clean the value or the database may
    refuse it, and then the DataError mapping makes that refusal a 422, never a 503."""
    client, tokens, _ = backend
    files = [("files", ("a.png", _png(), "image/png"))]
    data = {"patient_id": "MRN\x0042"}
    response = client.post("/api/v1/uploads", files=files, data=data, headers=bearer(tokens[Role.ingest]))
    assert response.status_code in (202, 422), response.text
    if response.status_code == 422:
        assert response.json()["error"] == {
            "code": "invalid_value",
            "message": "the database refused a value of the request: text holds a NUL byte",
        }


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_a_huge_qido_offset_is_422_not_503(backend: tuple[TestClient, dict[Role, str], Settings]) -> None:
    """10**30 passes the route's int() but no database integer holds it (PostgreSQL: DataError
    ``bigint out of range``; SQLite: the driver's OverflowError)."""
    client, tokens, _ = backend
    response = client.get(f"/dicomweb/studies?offset={10**30}", headers=bearer(tokens[Role.reader]))
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] != "database_unavailable"


def test_a_data_error_maps_to_422_with_no_value_in_the_message(
    backend: tuple[TestClient, dict[Role, str], Settings],
) -> None:
    client, tokens, settings = backend

    def refuse(_: Session) -> None:
        raise DataError("INSERT", {"v": "MRN-SECRET"}, RuntimeError("value too long for 'MRN-SECRET'"))

    factory = session_factory(settings)
    event.listen(factory, "before_commit", refuse)
    try:
        files = [("files", ("a.dcm", make_mr_dicom(), "application/dicom"))]
        response = client.post("/api/v1/uploads", files=files, headers=bearer(tokens[Role.ingest]))
    finally:
        event.remove(factory, "before_commit", refuse)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_value"
    assert "MRN-SECRET" not in response.text and "Retry-After" not in response.headers


@pytest.mark.parametrize("method", ["TRACE", "PATCH", "DELETE"])
def test_unsupported_methods_are_405_with_allow(client: TestClient, method: str) -> None:
    response = client.request(method, "/api/v1/worklist")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["error"]["code"] == "method_not_allowed"
    trace = client.request("TRACE", "/api/v1/uploads")
    assert trace.status_code == 405 and trace.headers["allow"] == "POST"


def test_text_problem_names_nul_bytes_and_lone_surrogates() -> None:
    assert text_problem("MRN-42 Ünïcode ✓") is None
    assert text_problem("a\x00b") == "contains a NUL byte"
    assert text_problem("a\ud800b") == "contains invalid text (a lone surrogate)"


def test_openapi_documents_503_on_database_routes_and_not_on_pages(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            touches_db = path.startswith(("/api/", "/dicomweb/")) or path == "/metrics"
            assert ("503" in operation["responses"]) == (touches_db or path == "/readyz"), (method, path)
