"""API tokens: ``sightline keys create/list/revoke`` and what authentication does with expiry and use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from helpers import bearer
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from service.auth.tokens import create_token
from service.db.session import session_factory, unit_of_work
from service.db.tables import ApiToken, Role, as_utc, utcnow
from service.settings import Settings


def _sightline(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(SIGHTLINE_DATABASE_URL=settings.database_url, SIGHTLINE_STORAGE_DIR=str(settings.storage_dir))
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def _row(settings: Settings, name: str) -> ApiToken:
    with session_factory(settings)() as db:
        return db.scalars(select(ApiToken).where(ApiToken.name == name)).one()


def _token(settings: Settings, name: str, role: Role = Role.reader, expires_in: timedelta | None = None) -> str:
    with unit_of_work(settings) as db:
        return create_token(db, role=role, name=name, expires_in=expires_in)


def test_create_with_expiry_sets_expires_at(settings: Settings) -> None:
    args = ("keys", "create", "--role", "ingest", "--name", "pacs", "--expires-in", "12h")
    result = _sightline(*args, settings=settings)
    assert result.returncode == 0, result.stderr
    expires_at = as_utc(_row(settings, "pacs").expires_at)  # type: ignore[arg-type]
    assert abs(expires_at - (utcnow() + timedelta(hours=12))) < timedelta(minutes=2)


@pytest.mark.parametrize("text", ["5x", "0d", "12", "-3h"])
def test_create_refuses_a_bad_duration(settings: Settings, text: str) -> None:
    result = _sightline("keys", "create", "--role", "reader", f"--expires-in={text}", settings=settings)
    assert result.returncode == 2 and "expected a positive duration such as 30d, 12h or 90m" in result.stderr


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """``keys list`` output by token prefix: columns are separated by two or more spaces."""
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines())
    return {row[2]: dict(zip(header, row, strict=True)) for row in rows}


def test_list_shows_every_token_without_its_secret(settings: Settings, client: TestClient) -> None:
    used = _token(settings, "viewer")
    assert client.get("/api/v1/worklist", headers=bearer(used)).status_code == 200
    expiring = _token(settings, "robot", Role.ingest, expires_in=timedelta(days=30))
    result = _sightline("keys", "list", settings=settings)
    assert result.returncode == 0, result.stderr
    assert used not in result.stdout and expiring not in result.stdout
    table, today = _table(result.stdout), utcnow().strftime("%Y-%m-%d")
    viewer, robot = table[used[:8]], table[expiring[:8]]
    assert viewer["NAME"] == "viewer" and viewer["ROLE"] == "reader" and viewer["EXPIRES"] == "never"
    assert viewer["CREATED"].startswith(today) and viewer["LAST USED"].startswith(today)
    assert viewer["REVOKED"] == "-"
    assert robot["NAME"] == "robot" and robot["ROLE"] == "ingest" and robot["LAST USED"] == "never"
    assert robot["EXPIRES"].startswith((utcnow() + timedelta(days=30)).strftime("%Y-%m-%d"))


def test_list_marks_expired_tokens(settings: Settings) -> None:
    token = _token(settings, "lapsed", expires_in=timedelta(seconds=-1))
    row = _table(_sightline("keys", "list", settings=settings).stdout)[token[:8]]
    assert row["EXPIRES"].endswith("(expired)")


def test_revoke_by_name_then_the_token_is_refused(settings: Settings, client: TestClient) -> None:
    token = _token(settings, "leaver")
    result = _sightline("keys", "revoke", "leaver", settings=settings)
    assert result.returncode == 0 and result.stdout == f"revoked leaver ({token[:8]}, reader)\n"
    response = client.get("/api/v1/worklist", headers=bearer(token))
    assert response.status_code == 401 and response.json()["error"]["message"] == "invalid or revoked token"
    listed = _table(_sightline("keys", "list", settings=settings).stdout)[token[:8]]
    assert listed["REVOKED"].startswith(utcnow().strftime("%Y-%m-%d"))


def test_revoke_refuses_an_ambiguous_name_and_lists_the_candidates(settings: Settings, client: TestClient) -> None:
    first, second = _token(settings, "shared"), _token(settings, "shared", Role.admin)
    result = _sightline("keys", "revoke", "shared", settings=settings)
    assert result.returncode == 2
    assert f"'shared' matches 2 tokens: {first[:8]} (shared, reader), {second[:8]} (shared, admin)" in result.stderr
    assert "Traceback" not in result.stderr
    assert client.get("/api/v1/worklist", headers=bearer(first)).status_code == 200  # nothing revoked
    by_prefix = _sightline("keys", "revoke", second[:8], settings=settings)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert client.get("/api/v1/worklist", headers=bearer(second)).status_code == 401
    assert client.get("/api/v1/worklist", headers=bearer(first)).status_code == 200


def test_revoke_of_an_unknown_token_says_so(settings: Settings) -> None:
    result = _sightline("keys", "revoke", "nobody", settings=settings)
    assert result.returncode == 2
    assert result.stderr == "error: no active token is named 'nobody' or has a prefix starting with it\n"


def test_an_expired_token_is_refused(settings: Settings, client: TestClient) -> None:
    token = _token(settings, "old", expires_in=timedelta(seconds=-1))
    response = client.get("/api/v1/worklist", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error"] == {"code": "unauthenticated", "message": "token expired"}
    fresh = _token(settings, "fresh", expires_in=timedelta(minutes=5))
    assert client.get("/api/v1/worklist", headers=bearer(fresh)).status_code == 200


def test_last_use_is_written_at_most_once_a_minute(settings: Settings, client: TestClient) -> None:
    token = _token(settings, "busy")
    assert _row(settings, "busy").last_used_at is None
    assert client.get("/api/v1/worklist", headers=bearer(token)).status_code == 200
    first = _row(settings, "busy").last_used_at
    assert first is not None and utcnow() - as_utc(first) < timedelta(seconds=30)
    assert client.get("/api/v1/worklist", headers=bearer(token)).status_code == 200
    assert _row(settings, "busy").last_used_at == first  # within the minute: no write
    stale = utcnow() - timedelta(seconds=90)
    with unit_of_work(settings) as db:
        db.execute(update(ApiToken).where(ApiToken.name == "busy").values(last_used_at=stale))
    assert client.get("/api/v1/worklist", headers=bearer(token)).status_code == 200
    assert as_utc(_row(settings, "busy").last_used_at) > stale + timedelta(seconds=60)  # type: ignore[arg-type]


def test_a_failed_last_use_write_never_fails_the_request(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*_: object) -> bool:
        raise OperationalError("UPDATE api_tokens", {}, Exception("database is locked"))

    monkeypatch.setattr("service.deps.record_use", locked)
    token = _token(settings, "unlucky")
    assert client.get("/api/v1/worklist", headers=bearer(token)).status_code == 200
    assert _row(settings, "unlucky").last_used_at is None


@pytest.mark.integration
def test_record_use_is_conditional_on_postgresql(pg_settings: Settings) -> None:
    from service.auth.tokens import find_token, record_use

    token = _token(pg_settings, "pg")
    now = utcnow()
    with unit_of_work(pg_settings) as db:
        row = find_token(db, token)
        assert row is not None
        assert record_use(db, row, now) is True
        assert record_use(db, row, now + timedelta(seconds=30)) is False  # within the minute
        assert record_use(db, row, now + timedelta(seconds=61)) is True
    assert as_utc(_row(pg_settings, "pg").last_used_at) == now + timedelta(seconds=61)  # type: ignore[arg-type]
