"""On-demand explanations on real parts: uvicorn API, PostgreSQL, Redis and a real Celery worker.

A reader asks for another CAM method over the tumour class the default map explains; the
worker computes it once; its pictures are served and differ from the default ones; the
same request again is answered from the row, with no second computation.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from helpers import bearer, issue_token, make_mr_dicom

from service.db.session import unit_of_work
from service.db.tables import OnDemandExplanation, Role
from service.queue import ANALYSIS_QUEUE, EXPLAIN_TASK, publisher

pytestmark = pytest.mark.integration

WAIT_S = 120.0


def wait_for(predicate: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
    return value


def decoded(content: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image.astype(np.int16)


def test_another_method_is_computed_once_by_the_worker_and_then_served_from_the_row(
    pg_settings, stack_env, api_url, start_worker
) -> None:
    worker = start_worker("w1", stack_env)
    ingest, reader = bearer(issue_token(pg_settings, Role.ingest)), bearer(issue_token(pg_settings, Role.reader))
    files = [("files", ("a.dcm", make_mr_dicom(size=160, lesion=(60, 70, 22), seed=2), "application/dicom"))]
    uploaded = httpx.post(f"{api_url}/api/v1/uploads", files=files, headers=ingest, timeout=30).json()["instances"][0]
    sop_uid, study_uid = uploaded["sop_instance_uid"], uploaded["study_instance_uid"]

    def default_result() -> dict[str, Any] | None:
        study = httpx.get(f"{api_url}/api/v1/studies/{study_uid}", headers=reader, timeout=10).json()
        result: dict[str, Any] | None = study["series"][0]["instances"][0]["result"]
        return result

    result = wait_for(default_result, "the default analysis")
    other = "gradcam" if result["cam_method"] != "gradcam" else "hirescam"
    body = {"method": other, "target_label": result["target_label"]}  # the tumour class the default map explains
    url = f"{api_url}/api/v1/instances/{uploaded['instance_id']}/explanations"

    asked = httpx.post(url, json=body, headers=reader, timeout=10)
    assert asked.status_code == 202, asked.text
    location = f"{api_url}{asked.headers['location']}"

    def finished() -> dict[str, Any] | None:
        view: dict[str, Any] = httpx.get(location, headers=reader, timeout=10).json()
        return view if view["status"] in ("done", "failed") else None

    done = wait_for(finished, "the explanation")
    assert (done["status"], done["attempts"], done["method"]) == ("done", 1, other), done
    assert done["target_label"] == result["target_label"] and done["model_sha256"] == result["model_sha256"]

    for kind in ("map", "overlay", "heatmap"):
        mine = httpx.get(f"{api_url}{done['images'][kind]}", headers=reader, timeout=10)
        assert mine.status_code == 200 and "immutable" in mine.headers["cache-control"]
        default = httpx.get(f"{api_url}/api/v1/instances/{sop_uid}/{kind}.png", headers=reader, timeout=10)
        assert decoded(mine.content).shape == decoded(default.content).shape
        assert np.abs(decoded(mine.content) - decoded(default.content)).mean() > 1.0, kind

    again = httpx.post(url, json=body, headers=reader, timeout=10)
    assert again.status_code == 200 and again.json()["id"] == done["id"] and again.json()["attempts"] == 1
    publisher(pg_settings.broker_url).send_task(EXPLAIN_TASK, args=[done["id"]], queue=ANALYSIS_QUEUE)  # a duplicate

    def ignored() -> bool:
        return any(
            "explanation not claimable" in line and done["id"] in line for line in worker.log_text().splitlines()
        )

    wait_for(ignored, "the worker to ignore the duplicate message", timeout_s=30)
    assert sum("explanation done" in line for line in worker.log_text().splitlines()) == 1
    with unit_of_work(pg_settings) as db:
        row = db.get_one(OnDemandExplanation, uuid.UUID(done["id"]))
        assert (row.attempts, row.worker is not None and row.worker.startswith("w1@")) == (1, True)
