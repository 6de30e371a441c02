"""The decode byte budget at the API (413 ``image_too_large``, nothing left behind) and the
cost of a broker outage (one failed publish per request, not one per file)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, make_mr_dicom, make_settings
from sqlalchemy import func, select

from service import queue
from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, JobStatus, Role, Series, Study
from service.ingest.single import store_batch
from service.settings import Settings
from tests.models.test_decode_budget import BOMB_SIDE, rgba16_png, rle_dicom

UPLOADS = "/api/v1/uploads"


def row_counts(settings: Settings) -> tuple[int, ...]:
    with unit_of_work(settings) as db:
        return tuple(
            db.scalar(select(func.count()).select_from(table)) or 0 for table in (Study, Series, Instance, AnalysisJob)
        )


def blob_files(settings: Settings) -> list[Path]:
    return [path for path in settings.storage_dir.rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    "make", [lambda: rgba16_png(BOMB_SIDE), lambda: rle_dicom(BOMB_SIDE)], ids=["png_rgba16", "dicom_rle"]
)
def test_an_image_past_the_decode_budget_is_refused_with_413_and_leaves_nothing(
    client: TestClient, tokens: dict[Role, str], settings: Settings, make: object
) -> None:
    assert callable(make)
    data = make()
    response = client.post(
        UPLOADS, files=[("files", ("x", data, "application/octet-stream"))], headers=bearer(tokens[Role.ingest])
    )
    assert response.status_code == 413, response.json()
    error = response.json()["error"]
    assert error["code"] == "image_too_large"
    assert "512 MiB decode budget" in error["message"] and error["message"].startswith("files[0]")
    assert row_counts(settings) == (0, 0, 0, 0)
    assert blob_files(settings) == []


def test_the_decode_budget_is_the_setting(tmp_path: Path, sqlite_template: Path) -> None:
    """A small budget refuses a small image: SIGHTLINE_MAX_DECODE_BYTES reaches the decoder."""
    import shutil

    shutil.copy(sqlite_template, tmp_path / "sightline.db")
    settings = make_settings(tmp_path, max_decode_bytes=64 * 64)
    from helpers import issue_token

    token = issue_token(settings, Role.ingest)
    with TestClient(create_app(settings)) as client:
        files = [("files", ("a.dcm", make_mr_dicom(size=128), "application/dicom"))]
        response = client.post(UPLOADS, files=files, headers=bearer(token))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"
    assert f"({64 * 64} bytes)" in response.json()["error"]["message"]
    assert row_counts(settings) == (0, 0, 0, 0)


def test_stow_refuses_an_rle_bomb_per_instance(settings: Settings) -> None:
    (result,) = store_batch(settings, [rle_dicom(BOMB_SIDE)])
    assert (result.status_code, result.code) == (413, "image_too_large")
    assert row_counts(settings) == (0, 0, 0, 0)
    assert blob_files(settings) == []


class _AcceptAndClose:
    """A TCP listener that accepts connections and closes them at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        import threading

        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_20_file_upload_during_a_broker_outage_costs_one_failed_publish(
    tmp_path: Path, sqlite_template: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job is committed as queued; one publish is tried and fails, the rest are left to
    the reconciler, so the broker sees the connection attempts of one message, not twenty."""
    import shutil

    listener = _AcceptAndClose()
    shutil.copy(sqlite_template, tmp_path / "sightline.db")
    settings = make_settings(tmp_path, broker_url=f"redis://127.0.0.1:{listener.port}/0")
    from helpers import issue_token

    token = issue_token(settings, Role.ingest)
    attempts: list[str] = []
    real_send = queue.send_analysis

    def counting_send(job_id: object, settings: Settings | None = None) -> None:
        attempts.append(str(job_id))
        real_send(job_id, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(queue, "send_analysis", counting_send)
    study = "1.2.826.0.1.3680043.8.498.777"
    files = [
        ("files", (f"{i}.dcm", make_mr_dicom(study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.{i}",
                                              seed=i), "application/dicom"))
        for i in range(1, 21)
    ]  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="service.queue"), TestClient(create_app(settings)) as client:
            response = client.post(UPLOADS, files=files, headers=bearer(token))
        one_message_connections = listener.accepted
    finally:
        listener.close()
    assert response.status_code == 202, response.json()
    assert response.json()["accepted"] == 20
    assert len(attempts) == 1
    warnings = [record for record in caplog.records if "broker unreachable" in record.getMessage()]
    assert len(warnings) == 1 and "20 job(s)" in warnings[0].getMessage()
    assert one_message_connections >= 1  # the publish really reached for the broker
    with unit_of_work(settings) as db:
        statuses = list(db.scalars(select(AnalysisJob.status)))
    assert statuses == [JobStatus.queued] * 20


def test_after_a_failed_publish_the_rest_of_the_batch_is_not_tried(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uuid

    from kombu.exceptions import OperationalError

    sent: list[uuid.UUID] = []

    def flaky(job_id: uuid.UUID, _: Settings | None = None) -> None:
        sent.append(job_id)
        if len(sent) == 2:
            raise OperationalError("connection refused")

    monkeypatch.setattr(queue, "send_analysis", flaky)
    jobs = [uuid.uuid4() for _ in range(5)]
    with caplog.at_level(logging.WARNING, logger="service.queue"):
        queue._send_all(settings, jobs)
    assert sent == jobs[:2]
    assert [r.getMessage() for r in caplog.records] == ["broker unreachable; 4 job(s) left for the reconciler"]
