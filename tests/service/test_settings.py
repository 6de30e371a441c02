"""Settings: wrong values stop start-up with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_postgres_urls_use_the_psycopg_driver() -> None:
    settings = Settings(_env_file=None, database_url="postgres://u@db:5432/sightline")  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+psycopg://u@db:5432/sightline"
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("database_url", "mysql://u@db/x", "SIGHTLINE_DATABASE_URL"),
        ("broker_url", "kafka://x", "SIGHTLINE_BROKER_URL"),
        ("max_upload_bytes", 0, "max_upload_bytes"),
        ("series_quiet_seconds", -1, "series_quiet_seconds"),
        ("cam_method", "fullgrad", "cam_method"),
    ],
)
def test_bad_values_are_refused_by_name(field: str, value: object, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(_env_file=None, **{field: value})  # type: ignore[arg-type]


def test_unknown_sightline_variables_in_env_file_are_refused(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SIGHTLINE_DATABASE_ULR=sqlite:///typo.db\n")
    with pytest.raises(ValidationError, match="database_ulr"):
        Settings(_env_file=env_file)  # type: ignore[call-arg]
