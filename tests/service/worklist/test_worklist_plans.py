"""The stored worklist sort key: kept in step by every ORM write, and read by an index.

The plans are PostgreSQL's for the exact SQL ``page()`` sends (captured from a real call),
over 20 k generated studies after ANALYZE: the first page, a deep page and every filter
must read an index in worklist order, with no Sort node.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from bench.worklist_scale import generate_studies, middle_cursor
from sqlalchemy import create_engine, event, select, text

from service.db.session import unit_of_work
from service.db.tables import UNSCORED_SORT, Study, sort_key_of
from service.settings import Settings
from service.worklist import service as worklist_service
from service.worklist.schemas import WorklistQuery

SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def test_sort_key_of_negates_priority_and_score() -> None:
    assert sort_key_of(Study(clinical_priority=2, triage_score=0.75)) == (-2, -0.75)
    assert sort_key_of(Study(clinical_priority=1, triage_score=None)) == (-1, UNSCORED_SORT)
    assert sort_key_of(Study()) == (0, UNSCORED_SORT)  # the column defaults: routine, unscored


def _stored(settings: Settings, study_id: uuid.UUID) -> tuple[int, float]:
    with unit_of_work(settings) as db:
        row = db.execute(select(Study.sort_priority, Study.sort_score).where(Study.id == study_id)).one()
    return row.sort_priority, row.sort_score


def test_every_orm_write_keeps_the_sort_key(settings: Settings) -> None:
    """Insert without a priority (the default), then updates of score and priority, one of
    them on a row expired by a commit (the listener loads what it needs)."""
    study_id = uuid.uuid4()
    with unit_of_work(settings) as db:
        db.add(Study(id=study_id, study_instance_uid="2.25.1"))
    assert _stored(settings, study_id) == (0, UNSCORED_SORT)
    with unit_of_work(settings) as db:
        study = db.get_one(Study, study_id)
        study.triage_score = 0.5
        db.flush()
        db.commit()  # expires the row
        study.clinical_priority = 2
    assert _stored(settings, study_id) == (-2, -0.5)
    with unit_of_work(settings) as db:
        db.get_one(Study, study_id).triage_score = None
    assert _stored(settings, study_id) == (-2, UNSCORED_SORT)


@pytest.fixture()
def generated(pg_settings: Settings) -> Iterator[Settings]:
    engine = create_engine(pg_settings.database_url)
    with engine.begin() as conn:
        generate_studies(conn, 20_000)
    engine.dispose()
    yield pg_settings


def _cases(settings: Settings) -> dict[str, dict[str, Any]]:
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        cursor = middle_cursor(conn)
        patient = conn.execute(text("SELECT patient_id FROM studies LIMIT 1")).scalar_one()
        newest = conn.execute(text("SELECT max(received_at) FROM studies")).scalar_one()
    engine.dispose()
    return {
        "first page": {},
        "deep page": {"cursor": cursor},
        "status": {"status": "pending"},
        "status, deep": {"status": "analysed", "cursor": cursor},
        "label": {"label": "meningioma"},
        "min_score": {"min_score": 0.9},
        "modality": {"modality": "CT"},
        "patient_id": {"patient_id": patient},
        "received_after": {"received_after": newest - timedelta(days=30)},
        "claimed": {"claimed": True},
        "unclaimed": {"claimed": False},
        "reported": {"reported": True},
        "unreported": {"reported": False},
        "unreported, deep": {"reported": False, "cursor": cursor},
        "date range (a year)": {"date_from": (newest - timedelta(days=365)).date(), "date_to": newest.date()},
    }


def _plan(settings: Settings, query: WorklistQuery) -> dict[str, Any]:
    """EXPLAIN of the statement ``page()`` executes for ``query``, with its parameters."""
    captured: list[tuple[str, Any]] = []
    with unit_of_work(settings) as db:
        connection = db.connection()

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if "FROM studies" in statement and "ORDER BY" in statement:
                captured.append((statement, parameters))

        event.listen(connection, "before_cursor_execute", capture)
        worklist_service.page(db, query)
        event.remove(connection, "before_cursor_execute", capture)
        statement, parameters = captured[-1]
        raw = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar_one()
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _studies_scan(plan: dict[str, Any]) -> str | None:
    return next((node["Node Type"] for node in _nodes(plan) if node.get("Relation Name") == "studies"), None)


@pytest.mark.integration
def test_every_page_reads_an_index_in_order(generated: Settings) -> None:
    failures = []
    plans = {}
    for name, params in _cases(generated).items():
        plan = _plan(generated, WorklistQuery(**params))
        plans[name] = plan
        sorts = [node for node in _nodes(plan) if node["Node Type"] in {"Sort", "Incremental Sort"}]
        if sorts or _studies_scan(plan) not in SCANS:
            failures.append(name)
    assert not failures, "\n\n".join(f"{name}:\n{json.dumps(plans[name], indent=1)}" for name in failures)
