"""``.env.example`` lists every setting with its real default, so it cannot drift from ``Settings``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from service.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
ACTIVE = re.compile(r"^(SIGHTLINE_[A-Z0-9_]+)=(.*)$")
# A setting whose default is None is documented commented out: an empty value would not mean None.
COMMENTED = re.compile(r"^#\s*(SIGHTLINE_[A-Z0-9_]+)=\s*$")


def _env_name(field: str) -> str:
    return f"SIGHTLINE_{field.upper()}"


def _parse() -> tuple[list[str], list[str]]:
    active: list[str] = []
    commented: list[str] = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := ACTIVE.match(line):
            active.append(match.group(1))
        elif match := COMMENTED.match(line):
            commented.append(match.group(1))
    return active, commented


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment wins over a dotenv file: take the settings' variables out of it."""
    for name in list(os.environ):
        if name.startswith("SIGHTLINE_"):
            monkeypatch.delenv(name)


def test_lists_exactly_the_settings_fields() -> None:
    active, commented = _parse()
    listed = active + commented
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({n for n in listed if listed.count(n) > 1})}"
    expected = {_env_name(name) for name in Settings.model_fields}
    assert set(listed) - expected == set(), "in .env.example but not a Settings field"
    assert expected - set(listed) == set(), "Settings fields missing from .env.example"


def test_only_optional_settings_are_commented_out() -> None:
    _, commented = _parse()
    optional = {_env_name(name) for name, field in Settings.model_fields.items() if field.default is None}
    assert set(commented) == optional


def test_every_variable_has_a_comment_above_it() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if ACTIVE.match(line) or COMMENTED.match(line):
            above = lines[index - 1] if index else ""
            assert above.startswith("#") and not COMMENTED.match(above), f"no comment above {line!r}"


@pytest.mark.usefixtures("clean_env")
def test_settings_load_from_the_file_with_the_documented_defaults() -> None:
    from_file = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_file.model_dump() == defaults.model_dump()
