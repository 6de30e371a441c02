"""Claim, release and report: the happy paths, every refusal, audit rows, and a race on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import AuditEvent, Role
from service.deps import Principal
from service.errors import Conflict
from service.settings import Settings
from service.workflow import claims

MakeStudy = Callable[..., str]


def post(client: TestClient, uid: str, action: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    response = client.post(f"/api/v1/studies/{uid}/{action}", headers=headers)
    return response.status_code, response.json()


def error_code(body: dict[str, object]) -> object:
    error = body["error"]
    assert isinstance(error, dict)
    return error["code"]


def actions(settings: Settings, uid: str) -> list[tuple[str, str, str | None]]:
    with unit_of_work(settings) as db:
        rows = db.scalars(select(AuditEvent).where(AuditEvent.study_instance_uid == uid).order_by(AuditEvent.id))
        return [(row.action, row.actor, row.client) for row in rows]


def test_claim_is_idempotent_for_its_holder_and_refused_to_another(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str], reader_b: dict[str, str]
) -> None:
    uid = make_study()
    status, body = post(client, uid, "claim", reader_a)
    assert status == 200
    assert body["study_instance_uid"] == uid and body["claimed_by"] == "reader-a"
    assert body["claimed_at"] is not None and body["reported_at"] is None and body["reported_by"] is None
    again_status, again = post(client, uid, "claim", reader_a)
    assert again_status == 200 and again["claimed_at"] == body["claimed_at"]
    status, body = post(client, uid, "claim", reader_b)
    assert status == 409 and error_code(body) == "study_claimed"
    assert "reader-a" in body["error"]["message"]  # type: ignore[index]


def test_release_by_holder_or_admin_only(
    client: TestClient,
    make_study: MakeStudy,
    reader_a: dict[str, str],
    reader_b: dict[str, str],
    admin: dict[str, str],
) -> None:
    uid = make_study()
    status, body = post(client, uid, "release", reader_a)
    assert status == 409 and error_code(body) == "not_claimant"
    post(client, uid, "claim", reader_a)
    status, body = post(client, uid, "release", reader_b)
    assert status == 409 and error_code(body) == "not_claimant"
    status, body = post(client, uid, "release", reader_a)
    assert status == 200 and body["claimed_by"] is None and body["claimed_at"] is None
    post(client, uid, "claim", reader_b)
    status, body = post(client, uid, "release", admin)
    assert status == 200 and body["claimed_by"] is None


def test_report_needs_the_claim_and_ends_it(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str], reader_b: dict[str, str]
) -> None:
    uid = make_study()
    status, body = post(client, uid, "report", reader_a)
    assert status == 409 and error_code(body) == "not_claimant"
    post(client, uid, "claim", reader_a)
    status, body = post(client, uid, "report", reader_b)
    assert status == 409 and error_code(body) == "not_claimant"
    status, body = post(client, uid, "report", reader_a)
    assert status == 200
    assert body["reported_by"] == "reader-a" and body["reported_at"] is not None and body["claimed_by"] is None
    for action in ("claim", "report"):
        status, body = post(client, uid, action, reader_b)
        assert status == 409 and error_code(body) == "study_reported"


@pytest.mark.parametrize("action", ["claim", "release", "report"])
def test_auth_and_unknown_study(
    client: TestClient, make_study: MakeStudy, ingest: dict[str, str], reader_a: dict[str, str], action: str
) -> None:
    uid = make_study()
    assert client.post(f"/api/v1/studies/{uid}/{action}").status_code == 401
    assert client.post(f"/api/v1/studies/{uid}/{action}", headers={"Authorization": "Bearer nope"}).status_code == 401
    status, body = post(client, uid, action, ingest)
    assert status == 403 and error_code(body) == "forbidden"
    status, body = post(client, "1.2.3.404", action, reader_a)
    assert status == 404 and error_code(body) == "study_not_found"


def test_each_change_is_audited_with_actor_and_client(
    client: TestClient, settings: Settings, make_study: MakeStudy, reader_a: dict[str, str], admin: dict[str, str]
) -> None:
    uid = make_study()
    post(client, uid, "claim", reader_a)
    post(client, uid, "release", admin)
    post(client, uid, "claim", reader_a)
    post(client, uid, "report", reader_a)
    post(client, uid, "claim", reader_a)  # refused: nothing recorded, the transaction rolled back
    assert actions(settings, uid) == [
        ("claim", "reader-a", "testclient"),
        ("release", "admin-1", "testclient"),
        ("claim", "reader-a", "testclient"),
        ("report", "reader-a", "testclient"),
    ]
    with unit_of_work(settings) as db:
        release = db.scalar(select(AuditEvent).where(AuditEvent.action == "release"))
        assert release is not None and release.role == "admin" and release.detail == {"holder": "reader-a"}


def claim_in_thread(settings: Settings, uid: str, name: str, barrier: threading.Barrier, out: dict[str, str]) -> None:
    try:
        with unit_of_work(settings) as db:
            barrier.wait(timeout=5)
            study = claims.locked_study(db, uid)
            claims.claim(db, Principal(token_name=name, role=Role.reader), study)
            time.sleep(0.3)  # hold the lock: without it the other claim would win too
        out[name] = "won"
    except Conflict as exc:
        out[name] = exc.code


@pytest.mark.integration
def test_two_concurrent_claims_on_postgresql_exactly_one_wins(pg_settings: Settings, insert: MakeStudy) -> None:
    uid = insert(pg_settings)
    barrier = threading.Barrier(2)
    out: dict[str, str] = {}
    threads = [
        threading.Thread(target=claim_in_thread, args=(pg_settings, uid, name, barrier, out)) for name in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(out.values()) == ["study_claimed", "won"]
    with unit_of_work(pg_settings) as db:
        study = claims.locked_study(db, uid, lock=False)
        assert study.claimed_by == next(name for name, result in out.items() if result == "won")


@pytest.mark.integration
def test_two_concurrent_claim_requests_on_postgresql(
    pg_settings: Settings, insert: MakeStudy, token_named: Callable[..., dict[str, str]]
) -> None:
    uid = insert(pg_settings)
    headers = [token_named(pg_settings, name) for name in ("pg-a", "pg-b")]
    statuses: list[int] = []
    with TestClient(create_app(pg_settings)) as pg_client:

        def claim(header: dict[str, str]) -> None:
            statuses.append(pg_client.post(f"/api/v1/studies/{uid}/claim", headers=header).status_code)

        threads = [threading.Thread(target=claim, args=(header,)) for header in headers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(statuses) == [200, 409]
