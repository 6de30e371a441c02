"""Property-based tests of every documented operation: no generated input makes the gateway
answer 5xx.

Schemathesis generates requests from ``/openapi.json``, valid (positive) and invalid (negative)
ones, sends them to the ASGI app in-process and checks ``not_a_server_error``. Bounded and
deterministic: ``MAX_EXAMPLES`` per operation, derandomised, no example database, so a CI
failure replays the same way on a laptop. Each operation runs on a fresh SQLite copy holding one
uploaded study, with an admin token (admin holds every role, so authentication never stops a
request short); a third of the examples address that study, so they reach past the 404s.
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom, upload
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case

from service.app import create_app
from service.db.tables import Role
from service.settings import Settings

MAX_EXAMPLES = 25


def _operations() -> list[str]:
    # The document depends on no setting and no database: build it without a lifespan.
    paths = create_app(Settings(_env_file=None)).openapi()["paths"]
    return [f"{method.upper()} {path}" for path, item in sorted(paths.items()) for method in item]


@pytest.mark.slow
@pytest.mark.parametrize("label", _operations())
def test_no_operation_answers_a_server_error(label: str, settings: Settings, tokens: dict[Role, str]) -> None:
    app = create_app(settings)
    known = _seed_one_study(app, tokens[Role.ingest])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    auth = bearer(tokens[Role.admin])
    existing = {name: known[name] for name in re.findall(r"{(\w+)}", label) if name in known}
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, headers=auth),
        operation.as_strategy(GenerationMode.NEGATIVE, headers=auth),
        operation.as_strategy(GenerationMode.POSITIVE, headers=auth, path_parameters=existing),
    )

    @given(case=cases)
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # the same examples on every run: a deterministic seed
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    check()


def _seed_one_study(app: object, ingest_token: str) -> dict[str, str]:
    """Upload one MR slice; its UIDs under every path parameter name that can address them."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    with TestClient(app) as client:  # type: ignore[arg-type]
        upload(client, ingest_token, make_mr_dicom(study_uid=study, series_uid=series, sop_uid=sop))
    return {"study_uid": study, "study": study, "series_uid": series, "series": series, "sop_uid": sop, "instance": sop}
