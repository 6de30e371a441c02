"""deploy/docker-compose.yml validated against the official Compose Specification JSON schema.

``compose-spec.json`` is vendored verbatim from the compose-spec project
(github.com/compose-spec/compose-spec, ``schema/compose-spec.json``, commit
170098ba07d9f53c383a41bfd4c5166b0a4529a6 of 2026-06-23): the schema Docker Compose v2 itself
validates with. The validation is proven able to fail: broken variants of the real file (an unknown
key, a value of the wrong type, a value outside an enum) must each be refused.
The structural checks (one image for every role, probes, migrations first) are in test_manifests.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def _errors(validator: jsonschema.Draft7Validator, document: object) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}" for error in
            validator.iter_errors(document)]  # fmt: skip


def test_vendored_schema_is_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["$id"] == "compose_spec.json"
    assert schema["title"] == "Compose Specification"
    # Sanity: the schema is strict about unknown keys, or the broken-file tests below prove nothing.
    assert schema["additionalProperties"] is False
    assert schema["definitions"]["service"]["additionalProperties"] is False


def test_compose_file_is_valid(validator: jsonschema.Draft7Validator, compose: dict[str, Any]) -> None:
    assert _errors(validator, compose) == []


def _typo_in_service_key(doc: dict[str, Any]) -> None:
    doc["services"]["api"]["imagee"] = doc["services"]["api"].pop("image")


def _unknown_top_level_key(doc: dict[str, Any]) -> None:
    doc["servicez"] = doc.pop("services")


def _ports_not_a_list(doc: dict[str, Any]) -> None:
    doc["services"]["api"]["ports"] = {"8000": 8000}


def _retries_not_a_number(doc: dict[str, Any]) -> None:
    doc["services"]["postgres"]["healthcheck"]["retries"] = ["five"]


def _unknown_depends_on_condition(doc: dict[str, Any]) -> None:
    doc["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"


def _command_a_mapping(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["command"] = {"sightline": "worker"}


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "typo in a service key": _typo_in_service_key,
    "unknown top-level key": _unknown_top_level_key,
    "ports a mapping": _ports_not_a_list,
    "healthcheck retries a list": _retries_not_a_number,
    "unknown depends_on condition": _unknown_depends_on_condition,
    "command a mapping": _command_a_mapping,
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
def test_broken_compose_file_fails_validation(
    validator: jsonschema.Draft7Validator,
    compose: dict[str, Any],
    breakage: Callable[[dict[str, Any]], None],
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert _errors(validator, broken), "the schema accepted a broken compose file"


def test_broken_compose_text_fails_validation(validator: jsonschema.Draft7Validator, tmp_path: Path) -> None:
    """The same through YAML text, as a reader would break it: a misspelt key and a string for a list."""
    path = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text(encoding="utf-8")
    assert "    depends_on:" in text and "    restart:" in text
    path.write_text(text.replace("    depends_on:", "    depend_on:", 1), encoding="utf-8")
    assert any("depend_on" in error for error in _errors(validator, yaml.safe_load(path.read_text(encoding="utf-8"))))
    path.write_text("services:\n  api:\n    image: sightline\n    volumes: /data\n", encoding="utf-8")
    assert _errors(validator, yaml.safe_load(path.read_text(encoding="utf-8")))
