"""Concurrent uploads into one new study on PostgreSQL: no deadlock, every instance once.

A PACS sending one study over parallel associations makes many requests create the same
study, series and patient at once. Each round uses fresh UIDs, against a real uvicorn
server, with one thread per request (see the lock order in ``service.ingest.service``).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from helpers import bearer, issue_token, mr_slice
from sqlalchemy import func, select

from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, Role, Series, Study
from service.settings import Settings

pytestmark = pytest.mark.integration

ROUNDS = 3
UPLOADS = 24  # concurrent upload requests, one instance each
STOW_REQUESTS, STOW_INSTANCES = 8, 3  # concurrent STOW-RS requests, several instances each
SERIES = 2


@pytest.fixture()
def server(pg_settings: Settings) -> Iterator[str]:
    """A real uvicorn server in a thread; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(pg_settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


def new_study_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def check_study(settings: Settings, study_uid: str, expected_sops: set[str]) -> None:
    with unit_of_work(settings) as db:
        studies = db.scalars(select(Study).where(Study.study_instance_uid == study_uid)).all()
        assert len(studies) == 1
        sops = db.scalars(select(Instance.sop_instance_uid).where(Instance.study_id == studies[0].id)).all()
        assert sorted(sops) == sorted(expected_sops)  # each stored once
        series = db.scalars(select(Series.series_instance_uid).where(Series.study_id == studies[0].id)).all()
        assert sorted(series) == sorted(f"{study_uid}.{n}" for n in range(1, SERIES + 1))
        jobs = db.scalar(
            select(func.count()).select_from(AnalysisJob).join(Instance).where(Instance.study_id == studies[0].id)
        )
        assert jobs == len(expected_sops)


def test_concurrent_uploads_into_one_new_study_all_succeed(pg_settings: Settings, server: str) -> None:
    token = issue_token(pg_settings, Role.ingest)
    for _ in range(ROUNDS):
        study = new_study_uid()
        files = [mr_slice(study, f"{study}.{1 + n % SERIES}", n + 1) for n in range(UPLOADS)]

        def send(data: bytes) -> int:
            with httpx.Client(base_url=server, timeout=60) as http:
                response = http.post(
                    "/api/v1/uploads", files=[("files", ("x.dcm", data, "application/dicom"))], headers=bearer(token)
                )
            return response.status_code

        with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
            statuses = list(pool.map(send, files))
        assert statuses == [202] * UPLOADS
        check_study(pg_settings, study, {f"{study}.{1 + n % SERIES}.{n + 1}" for n in range(UPLOADS)})


def stow_body(instances: list[bytes], boundary: str) -> bytes:
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in instances]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_concurrent_stow_requests_into_one_new_study_all_succeed(pg_settings: Settings, server: str) -> None:
    token = issue_token(pg_settings, Role.ingest)
    boundary = "sightline-concurrent"
    headers = {
        **bearer(token),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    for _ in range(ROUNDS):
        study = new_study_uid()
        numbers = [[r * STOW_INSTANCES + i + 1 for i in range(STOW_INSTANCES)] for r in range(STOW_REQUESTS)]
        bodies = [stow_body([mr_slice(study, f"{study}.{1 + n % SERIES}", n) for n in group], boundary)
                  for group in numbers]  # fmt: skip

        def send(body: bytes) -> int:
            with httpx.Client(base_url=server, timeout=60) as http:
                return http.post("/dicomweb/studies", content=body, headers=headers).status_code

        with ThreadPoolExecutor(max_workers=STOW_REQUESTS) as pool:
            statuses = list(pool.map(send, bodies))
        assert statuses == [200] * STOW_REQUESTS
        expected = {f"{study}.{1 + n % SERIES}.{n}" for group in numbers for n in group}
        check_study(pg_settings, study, expected)
