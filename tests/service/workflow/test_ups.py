"""UPS-RS over the reading task: search, retrieve, and state changes kept in step with the native API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from pydicom import Dataset

from service.workflow.ups import UPS_PUSH

MakeStudy = Callable[..., str]
DICOM_JSON = "application/dicom+json"


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def state_body(state: str, transaction_uid: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction_uid is not None:
        body["00081195"] = {"vr": "UI", "Value": [transaction_uid]}
    return body


def workitem_uid(client: TestClient, uid: str, headers: dict[str, str]) -> str:
    """The workitem of a study, found as a client would: a search by Study Instance UID."""
    found = client.get("/dicomweb/workitems", params={"StudyInstanceUID": uid}, headers=headers).json()
    assert len(found) == 1, found
    return str(value(found[0], "00080018"))


def put_state(client: TestClient, uid: str, headers: dict[str, str], body: Any) -> Any:
    return client.put(
        f"/dicomweb/workitems/{workitem_uid(client, uid, headers)}/state",
        json=body,
        headers={**headers, "Content-Type": DICOM_JSON},
    )


def get_item(client: TestClient, uid: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/dicomweb/workitems/{workitem_uid(client, uid, headers)}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_JSON
    items = response.json()
    assert len(items) == 1
    item: dict[str, Any] = items[0]
    return item


def test_workitem_uid_is_the_study_rows_uuid_and_unknown_ones_are_404(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]
) -> None:
    first, second = make_study(), make_study()
    uid = workitem_uid(client, first, reader_a)
    assert uid == workitem_uid(client, first, reader_a) != workitem_uid(client, second, reader_a)
    assert uid.startswith("2.25.") and len(uid) <= 64 and uuid.UUID(int=int(uid[5:]))
    for unknown in ("2.25.1", "2.25." + "9" * 40, "1.2.3", "2.25.x"):
        response = client.get(f"/dicomweb/workitems/{unknown}", headers=reader_a)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "workitem_not_found"), unknown


def test_workitem_attributes(client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]) -> None:
    uid = make_study(label="glioma", score=0.87, priority=2, patient_id="PX-9")
    item = get_item(client, uid, reader_a)
    ds = Dataset.from_json(item)
    assert ds.SOPClassUID == UPS_PUSH and ds.SOPInstanceUID == workitem_uid(client, uid, reader_a)
    assert ds.ProcedureStepState == "SCHEDULED" and ds.ScheduledProcedureStepPriority == "HIGH"
    assert ds.ProcedureStepLabel == "Read brain MRI (AI triaged)" and ds.WorklistLabel == "Sightline"
    assert ds.ScheduledProcedureStepStartDateTime == "20261101080000+0000"
    assert ds.PatientID == "PX-9" and str(ds.PatientName) == "Test^Patient"
    assert ds.StudyInstanceUID == uid and ds.ReferencedRequestSequence[0].StudyInstanceUID == uid
    assert "glioma" in ds.CommentsOnTheScheduledProcedureStep and "0.87" in ds.CommentsOnTheScheduledProcedureStep
    assert ds.InputReadinessState == "READY"
    source = ds.InputInformationSequence[0]
    assert source.StudyInstanceUID == uid and source.TypeOfInstances == "DICOM"
    assert source.WADORSRetrievalSequence[0].RetrieveURL == f"/dicomweb/studies/{uid}"
    assert "TransactionUID" not in ds and "ProcedureStepProgressInformationSequence" not in ds
    pending = get_item(client, make_study(label=None, score=None), reader_a)
    assert value(pending, "00404041") == "INCOMPLETE" and "no result" in value(pending, "00400400")


def test_search_by_state_patient_study_and_priority(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]
) -> None:
    free = make_study(priority=1, patient_id="P-FREE")
    claimed = make_study(priority=0, minutes=1)
    reported = make_study(priority=0, minutes=2)
    client.post(f"/api/v1/studies/{claimed}/claim", headers=reader_a)
    client.post(f"/api/v1/studies/{reported}/claim", headers=reader_a)
    client.post(f"/api/v1/studies/{reported}/report", headers=reader_a)

    def found(**params: str) -> list[str]:
        response = client.get("/dicomweb/workitems", params=params, headers=reader_a)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == DICOM_JSON
        return [value(item, "0020000D") for item in response.json()]

    assert found(ProcedureStepState="SCHEDULED") == [free]
    assert found(ProcedureStepState="IN PROGRESS") == [claimed]
    assert found(**{"00741000": "COMPLETED"}) == [reported]
    assert found(ProcedureStepState="CANCELED") == []
    assert found(PatientID="P-FREE") == [free]
    assert found(StudyInstanceUID=claimed) == [claimed]
    assert found(**{"ReferencedRequestSequence.StudyInstanceUID": f"{free},{reported}"}) == [free, reported]
    assert found(ScheduledProcedureStepPriority="MEDIUM") == [free]
    assert found(limit="1", offset="1") == [claimed]
    assert found(includefield="all") == [free, claimed, reported]
    for params in ({"Modality": "MR"}, {"ProcedureStepState": "DONE"}, {"limit": "-1"}, {"00741200": "URGENT"}):
        response = client.get("/dicomweb/workitems", params=params, headers=reader_a)
        assert response.status_code == 400, params


def test_ups_claim_shows_in_the_native_api_and_completes_with_the_transaction_uid(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str], reader_b: dict[str, str]
) -> None:
    uid = make_study()
    transaction = f"2.25.{uuid.uuid4().int}"
    assert put_state(client, uid, reader_a, state_body("IN PROGRESS", transaction)).status_code == 200
    native = client.get(f"/api/v1/studies/{uid}", headers=reader_a).json()
    assert native["claimed_by"] == "reader-a"
    item = get_item(client, uid, reader_b)
    assert value(item, "00741000") == "IN PROGRESS" and "00081195" not in item
    assert "reader-a" in value(item, "00741002")["00741006"]["Value"][0]
    again = put_state(client, uid, reader_b, state_body("IN PROGRESS", f"2.25.{uuid.uuid4().int}"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "workitem_state_conflict"
    wrong = put_state(client, uid, reader_a, state_body("COMPLETED", "2.25.1"))
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "transaction_uid_mismatch"
    missing = put_state(client, uid, reader_a, state_body("COMPLETED", None))
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "transaction_uid_mismatch"
    assert value(get_item(client, uid, reader_a), "00741000") == "IN PROGRESS"
    done = put_state(client, uid, reader_a, state_body("COMPLETED", transaction))
    assert done.status_code == 200 and done.content == b""
    assert value(get_item(client, uid, reader_a), "00741000") == "COMPLETED"
    native = client.get(f"/api/v1/studies/{uid}", headers=reader_a).json()
    assert native["reported_by"] == "reader-a" and native["reported_at"] is not None and native["claimed_by"] is None
    final = put_state(client, uid, reader_a, state_body("CANCELED", transaction))
    assert final.status_code == 409


def test_native_claim_shows_in_progress_and_cancel_releases(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str], admin: dict[str, str]
) -> None:
    uid = make_study()
    client.post(f"/api/v1/studies/{uid}/claim", headers=reader_a)
    assert value(get_item(client, uid, reader_a), "00741000") == "IN PROGRESS"
    # The natively generated Transaction UID is never shown, so UPS cannot complete it.
    assert put_state(client, uid, reader_a, state_body("COMPLETED", f"2.25.{uuid.uuid4().int}")).status_code == 400
    client.post(f"/api/v1/studies/{uid}/release", headers=reader_a)
    transaction = f"2.25.{uuid.uuid4().int}"
    assert put_state(client, uid, reader_a, state_body("IN PROGRESS", transaction)).status_code == 200
    assert put_state(client, uid, reader_a, state_body("CANCELED", transaction)).status_code == 200
    assert value(get_item(client, uid, reader_a), "00741000") == "SCHEDULED"
    assert client.get(f"/api/v1/studies/{uid}", headers=reader_a).json()["claimed_by"] is None
    events = client.get("/api/v1/audit", params={"study_uid": uid}, headers=admin).json()["items"]
    ups_events = [(e["action"], e["detail"]) for e in events if e["detail"] and e["detail"].get("via") == "ups-rs"]
    assert ups_events == [
        ("claim", {"via": "ups-rs", "state": "IN PROGRESS"}),
        ("release", {"via": "ups-rs", "state": "SCHEDULED"}),
    ]


def test_state_change_refusals(client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]) -> None:
    uid = make_study()
    transaction = f"2.25.{uuid.uuid4().int}"
    cases: list[tuple[Any, int, str]] = [
        (state_body("SCHEDULED", transaction), 400, "invalid_state_transition"),
        (state_body("COMPLETED", transaction), 400, "invalid_state_transition"),
        (state_body("CANCELED", transaction), 400, "invalid_state_transition"),
        (state_body("IN PROGRESS", None), 400, "transaction_uid_mismatch"),
        (state_body("PAUSED", transaction), 400, "invalid_ups_request"),
        ({"00741000": {"vr": "CS", "Value": ["IN PROGRESS", "COMPLETED"]}}, 400, "invalid_ups_request"),
        ({"00741000": {"vr": "CS"}}, 400, "invalid_ups_request"),
        ([], 400, "invalid_ups_request"),
    ]
    for body, status, code in cases:
        response = put_state(client, uid, reader_a, body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    not_json = client.put(
        f"/dicomweb/workitems/{workitem_uid(client, uid, reader_a)}/state",
        content=b"{",
        headers={**reader_a, "Content-Type": DICOM_JSON},
    )
    assert not_json.status_code == 400
    body = state_body("IN PROGRESS", transaction)
    unknown = client.put("/dicomweb/workitems/2.25.1/state", json=body, headers=reader_a)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "workitem_not_found"
    assert value(get_item(client, uid, reader_a), "00741000") == "SCHEDULED"


def test_ups_auth_and_unknown_workitem(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str], ingest: dict[str, str]
) -> None:
    uid = make_study()
    item = f"/dicomweb/workitems/{workitem_uid(client, uid, reader_a)}"
    assert client.get("/dicomweb/workitems").status_code == 401
    assert client.get(item).status_code == 401
    assert client.get(item, headers=ingest).status_code == 403
    assert client.put(item + "/state", json=state_body("IN PROGRESS", "2.25.9"), headers=ingest).status_code == 403
    missing = client.get("/dicomweb/workitems/2.25.404", headers=reader_a)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "workitem_not_found"
