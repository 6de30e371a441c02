"""The audit trail: paging and filters, the JSON-lines export, and PostgreSQL refusing changes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from service.settings import Settings
from service.workflow import audit

MakeStudy = Callable[..., str]


def seed(client: TestClient, make_study: MakeStudy, reader: dict[str, str]) -> list[str]:
    uids = [make_study(), make_study()]
    for uid in uids:
        client.get(f"/api/v1/studies/{uid}", headers=reader)
        client.post(f"/api/v1/studies/{uid}/claim", headers=reader)
    return uids


def test_audit_pages_in_id_order_with_filters(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str], admin: dict[str, str]
) -> None:
    first, second = seed(client, make_study, reader_a)
    page = client.get("/api/v1/audit", params={"limit": 3}, headers=admin).json()
    assert [(i["action"], i["study_instance_uid"]) for i in page["items"]] == [
        ("view", first), ("claim", first), ("view", second)
    ]  # fmt: skip
    item = page["items"][0]
    assert item["actor"] == "reader-a" and item["role"] == "reader" and item["client"] == "testclient"
    assert item["at"].endswith("Z") and item["id"] < page["items"][1]["id"]
    rest = client.get("/api/v1/audit", params={"after_id": page["next_after_id"]}, headers=admin).json()
    assert [i["action"] for i in rest["items"]] == ["claim"] and rest["next_after_id"] is None
    claims = client.get("/api/v1/audit", params={"action": "claim", "study_uid": second}, headers=admin).json()
    assert [(i["action"], i["study_instance_uid"]) for i in claims["items"]] == [("claim", second)]
    assert client.get("/api/v1/audit", params={"actor": "nobody"}, headers=admin).json()["items"] == []


def test_audit_refusals(client: TestClient, reader_a: dict[str, str], admin: dict[str, str]) -> None:
    assert client.get("/api/v1/audit").status_code == 401
    assert client.get("/api/v1/audit", headers=reader_a).status_code == 403
    assert client.get("/api/v1/audit/export", headers=reader_a).status_code == 403
    for params in ({"limit": 1001}, {"limit": 0}, {"after_id": -1}, {"bogus": 1}):
        response = client.get("/api/v1/audit", params=params, headers=admin)
        assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"


def test_export_streams_json_lines_and_is_itself_audited(
    client: TestClient,
    make_study: MakeStudy,
    reader_a: dict[str, str],
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit, "EXPORT_BATCH", 2)  # several batches
    first, second = seed(client, make_study, reader_a)
    response = client.get("/api/v1/audit/export", headers=admin)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [(row["action"], row["study_instance_uid"]) for row in lines] == [
        ("view", first), ("claim", first), ("view", second), ("claim", second), ("export_audit", None)
    ]  # fmt: skip
    assert [row["id"] for row in lines] == sorted(row["id"] for row in lines)
    filtered = client.get("/api/v1/audit/export", params={"action": "claim"}, headers=admin)
    assert [json.loads(line)["study_instance_uid"] for line in filtered.text.splitlines()] == [first, second]
    exports = client.get("/api/v1/audit", params={"action": "export_audit"}, headers=admin).json()["items"]
    assert [(e["actor"], e["role"], e["detail"]) for e in exports] == [
        ("admin-1", "admin", {}),
        ("admin-1", "admin", {"action": "claim"}),
    ]


@pytest.mark.integration
def test_postgresql_refuses_to_change_or_delete_audit_events(
    pg_settings: Settings, insert: MakeStudy, token_named: Callable[..., dict[str, str]]
) -> None:
    from service.app import create_app

    uid = insert(pg_settings)
    with TestClient(create_app(pg_settings)) as pg_client:
        assert pg_client.get(f"/api/v1/studies/{uid}", headers=token_named(pg_settings, "pg-reader")).status_code == 200
    engine = create_engine(pg_settings.database_url)
    try:
        for statement in (
            "UPDATE audit_events SET actor = 'someone-else' WHERE study_instance_uid = :uid",
            "DELETE FROM audit_events WHERE study_instance_uid = :uid",
        ):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement), {"uid": uid})
        with engine.connect() as conn:
            actors = conn.execute(text("SELECT actor FROM audit_events WHERE study_instance_uid = :uid"), {"uid": uid})
            assert actors.scalars().all() == ["pg-reader"]
    finally:
        engine.dispose()
