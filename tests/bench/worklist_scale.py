"""Worklist latency at scale: ``GET /api/v1/worklist`` over 10 k and 1 M studies on PostgreSQL.

Each size gets a scratch database migrated to head and filled by one ``generate_series``
INSERT (``generate_studies``: a realistic mix of priorities, scores with ~15 % unscored,
three years of arrivals, labels, modalities, ~4 studies per patient, ~3 % unreported and a
few claims; no series or instance rows). The app runs in uvicorn in a thread of this
process and is called over real HTTP by one httpx client, one request at a time: the first
page, a deep page (a cursor taken from the middle of the order), and each filter, 50 pages
of 50 each after 5 warm-up requests; p50 and p99 per case.
Run standalone: ``PYTHONPATH=.:tests .venv/bin/python tests/bench/worklist_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from helpers import bearer, issue_token, make_settings, scratch_pg_database, services_available
from sqlalchemy import Connection, create_engine, text
from stack import free_port

from service.app import create_app
from service.db.migrate import upgrade
from service.db.tables import Role, Study
from service.worklist.cursor import SortKey, encode_cursor

ROOT = Path(__file__).resolve().parents[2]
SECTION_TITLE = "## Worklist at scale"
SIZES = (10_000, 1_000_000)
REQUESTS, WARM_UP = 50, 5

GENERATE = """
INSERT INTO studies (id, study_instance_uid, patient_id, patient_name, accession_number, study_date, modality,
    body_part, description, synthetic, clinical_priority, status, triage_score, predicted_label, received_at,
    updated_at, results_generation, claimed_by, claimed_at, reported_by, reported_at, sort_priority, sort_score)
SELECT gen_random_uuid(), '2.25.' || n, 'P' || patient, 'Bench^' || patient, 'A' || n, received::date, modality,
    'BRAIN', 'bench study', true, priority, status, score, label, received, received, 0,
    claimed, CASE WHEN claimed IS NOT NULL THEN received END,
    CASE WHEN NOT unreported THEN 'reader' END, CASE WHEN NOT unreported THEN received + interval '1 day' END,
    -priority, -coalesce(score, -1.0)
FROM (
    SELECT n, patient, received, priority, score, unreported,
        CASE WHEN score IS NOT NULL THEN 'analysed' WHEN r2 < 0.95 THEN 'pending'
             WHEN r2 < 0.98 THEN 'not_applicable' ELSE 'failed' END AS status,
        CASE WHEN score IS NULL THEN NULL WHEN score < 0.3 THEN 'notumor' WHEN r4 < 0.45 THEN 'glioma'
             WHEN r4 < 0.8 THEN 'meningioma' ELSE 'pituitary' END AS label,
        CASE WHEN r5 < 0.6 THEN 'MR' WHEN r5 < 0.9 THEN 'CT' WHEN r5 < 0.98 THEN 'CR' ELSE 'US' END AS modality,
        CASE WHEN unreported AND r8 < 0.1 THEN 'reader-' || (n % 7) END AS claimed
    FROM (
        SELECT n, r2, r4, r5, r8, floor(r9 * :count / 4)::int AS patient,
            CASE WHEN r1 < 0.02 THEN 2 WHEN r1 < 0.12 THEN 1 ELSE 0 END AS priority,
            CASE WHEN r2 < 0.85 THEN round((r3 ^ 3)::numeric, 4)::float8 END AS score,
            received,
            received > now() - interval '3 days' OR r7 < 0.03 AS unreported
        FROM (
            SELECT n, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5,
                random() AS r7, random() AS r8, random() AS r9, now() - random() * interval '1095 days' AS received
            FROM generate_series(1, :count) AS n
        ) AS draws
    ) AS drawn
) AS studies_to_be
"""


def generate_studies(conn: Connection, count: int, *, rebuild_indexes: bool = False) -> None:
    """``count`` studies in one INSERT, then ANALYZE. ``rebuild_indexes``: drop the study
    indexes first and build them after (a sorted build is several times faster than
    maintaining them row by row: the 1 M fill takes about a minute instead of several)."""
    conn.execute(text("SELECT setseed(0.42)"))
    indexes = sorted(Study.__table__.indexes, key=lambda index: str(index.name))
    if rebuild_indexes:
        for index in indexes:
            index.drop(conn)
    conn.execute(text(GENERATE), {"count": count})
    if rebuild_indexes:
        conn.execute(text("SET maintenance_work_mem = '256MB'"))
        for index in indexes:
            index.create(conn)
    conn.execute(text("ANALYZE studies"))


def middle_cursor(conn: Connection) -> str:
    """The cursor of the row halfway down the unfiltered order (deeper than paging would go)."""
    count = conn.execute(text("SELECT count(*) FROM studies")).scalar_one()
    row = conn.execute(
        text(
            "SELECT sort_priority, sort_score, received_at, id FROM studies "
            "ORDER BY sort_priority, sort_score, received_at, id OFFSET :skip LIMIT 1"
        ),
        {"skip": count // 2},
    ).one()
    return encode_cursor(SortKey(*row))


def cases(conn: Connection) -> dict[str, dict[str, Any]]:
    """Query parameters per measured case."""
    patient = conn.execute(text("SELECT patient_id FROM studies WHERE study_instance_uid = '2.25.1'")).scalar_one()
    newest = conn.execute(text("SELECT max(received_at) FROM studies")).scalar_one()
    return {
        "first page": {},
        "deep page (cursor from the middle)": {"cursor": middle_cursor(conn)},
        "status=pending": {"status": "pending"},
        "label=meningioma": {"label": "meningioma"},
        "min_score=0.9": {"min_score": 0.9},
        "modality=CT": {"modality": "CT"},
        "date_from..date_to (one month)": {
            "date_from": (newest - timedelta(days=400)).date().isoformat(),
            "date_to": (newest - timedelta(days=370)).date().isoformat(),
        },
        "patient_id": {"patient_id": patient},
        "received_after (last 7 days)": {"received_after": (newest - timedelta(days=7)).isoformat()},
        "claimed=true": {"claimed": "true"},
        "reported=false": {"reported": "false"},
    }


@contextmanager
def serving(database_url: str, workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The app in uvicorn in a thread; its base URL and a reader's headers."""
    settings = make_settings(workdir, database_url=database_url)
    headers = bearer(issue_token(settings, Role.reader))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", headers
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def measure(client: httpx.Client, headers: dict[str, str], params: dict[str, Any]) -> dict[str, Any]:
    latencies, rows = [], 0
    for attempt in range(WARM_UP + REQUESTS):
        started = time.perf_counter()
        response = client.get("/api/v1/worklist", params=params, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        rows = len(response.json()["items"])
        if attempt >= WARM_UP:
            latencies.append(elapsed)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return {"p50_ms": round(statistics.median(latencies), 1), "p99_ms": round(p99, 1), "rows": rows}


def one_size(count: int) -> dict[str, Any]:
    with scratch_pg_database("sightline_wl_bench") as url, tempfile.TemporaryDirectory() as tmp:
        upgrade(url)
        engine = create_engine(url)
        started = time.monotonic()
        with engine.begin() as conn:
            generate_studies(conn, count, rebuild_indexes=count > 100_000)
        generated_s = time.monotonic() - started
        with engine.begin() as conn:
            params = cases(conn)
        engine.dispose()
        with serving(url, Path(tmp)) as (base_url, headers), httpx.Client(base_url=base_url, timeout=30) as client:
            figures = {name: measure(client, headers, query) for name, query in params.items()}
    return {"studies": count, "generate_s": round(generated_s, 1), "cases": figures}


def run(sizes: tuple[int, ...] = SIZES) -> dict[str, Any] | None:
    """p50/p99 per case and size, or ``None`` when PostgreSQL is not reachable."""
    if not services_available():
        print("worklist_scale skipped: PostgreSQL/Redis not reachable on 127.0.0.1", file=sys.stderr)
        return None
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "requests": REQUESTS,
        "sizes": [one_size(count) for count in sizes],
    }


def section(f: dict[str, Any] | None) -> str:
    """The Markdown section of ``reports/benchmark.md``."""
    if f is None:
        return f"{SECTION_TITLE}\n\nNot measured in this run: PostgreSQL not reachable.\n"
    sizes = f["sizes"]
    header = " | ".join(f"{s['studies']:,} p50 / p99 (ms)" for s in sizes)
    names = list(sizes[0]["cases"])
    rows = "\n".join(
        f"| {name} | "
        + " | ".join(f"{s['cases'][name]['p50_ms']} / **{s['cases'][name]['p99_ms']}**" for s in sizes)
        + " |"
        for name in names
    )
    generated = ", ".join(f"{s['studies']:,} in {s['generate_s']} s" for s in sizes)
    return f"""{SECTION_TITLE}

`GET /api/v1/worklist` (50 rows a page) on PostgreSQL, {f["requests"]} requests per case after 5
warm-up ones, one at a time over HTTP (httpx) to uvicorn running the app in a thread of the
benchmark process, on {f["machine"]}. Studies generated by SQL `generate_series` ({generated}).
Every case reads an index in worklist order (`(sort_priority, sort_score, received_at, id)`,
alone or after the filtered column); the deep page starts from a cursor halfway down the
order. Aim: p99 ≤ 20 ms, deep page ≈ first page. Produced by `tests/bench/worklist_scale.py`.

| case | {header} |
|---|{"---|" * len(sizes)}
{rows}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "benchmark.md")
    parser.add_argument("--sizes", type=lambda value: tuple(int(part) for part in value.split(",")), default=SIZES)
    args = parser.parse_args()
    figures = run(args.sizes)
    _write_section(args.report, section(figures))
    print(json.dumps(figures, indent=2))
    return 0 if figures is not None else 1


def _write_section(report: Path, body: str) -> None:
    current = report.read_text() if report.exists() else "# Sightline benchmark\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: body + "\n", current, count=1).rstrip("\n") + "\n"
    else:
        updated = current.rstrip("\n") + "\n\n" + body
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(updated)


if __name__ == "__main__":
    raise SystemExit(main())
