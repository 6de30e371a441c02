"""The whole round trip with a real PACS: Orthanc forwards a study to Sightline by C-STORE;
a real worker and beat analyse it and complete its series; Sightline pushes its SR,
Secondary Capture and presentation state back to Orthanc, by C-STORE and by STOW-RS;
Orthanc stores them, and they read back as valid DICOM referencing the study's own images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from helpers import bearer, issue_token
from orthanc import ORTHANC_AET, OrthancProcess, load_into_orthanc, require_orthanc, short_uid, study_files
from stack import StartProcess, api_argv, beat_argv, free_port, wait_healthy, worker_argv

from service.db.tables import Role
from service.settings import Settings

pytestmark = pytest.mark.integration

LISTENER_AET = "SIGHTLINE"
RESULT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.7": "sc",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.11.1": "pr",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.30": "pm",  # Parametric Map
}
DEADLINE_S = 180.0


def wait_for(what: str, check: Any, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout_s} s")


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []  # highdicom validated while building; dicom3tools is optional here
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("kind", ["dimse", "stow"])
def test_orthanc_sends_a_study_and_stores_sightlines_results(
    kind: str,
    tmp_path: Path,
    pg_settings: Settings,
    stack_env: dict[str, str],
    start_process: StartProcess,
) -> None:
    require_orthanc()
    api_port, listener_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    with OrthancProcess(
        tmp_path / "orthanc",
        sightline_url=api_url,
        sightline_token=issue_token(pg_settings, Role.ingest),
        sightline_dicom=(LISTENER_AET, listener_port),
    ) as orthanc:
        if kind == "dimse":
            destination = {"kind": "dimse", "ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc.dicom_port}
        else:
            destination = {"kind": "stow", "url": f"{orthanc.url}/dicom-web"}
        env = {
            **stack_env,
            "SIGHTLINE_SERIES_QUIET_SECONDS": "2",
            "SIGHTLINE_SERIES_SWEEP_SECONDS": "1",
            "SIGHTLINE_DICOM_AE_TITLE": LISTENER_AET,
            "SIGHTLINE_DICOM_ALLOWED_CALLING_AETS": json.dumps([ORTHANC_AET]),
            "SIGHTLINE_RESULT_DESTINATIONS": json.dumps([{"name": "orthanc", **destination}]),
        }
        wait_healthy(api_url, start_process("api", api_argv(api_port), env))
        listener = [sys.executable, "-m", "service.cli", "dicom-listener", "--port", str(listener_port)]
        start_process("dicom-listener", listener, env).wait_for_log("DICOM listener")
        start_process("worker", worker_argv("w1"), env).wait_for_log("ready.")
        start_process("beat", beat_argv(tmp_path / "beat-schedule"), env)

        study_uid = short_uid()
        originals = study_files(study_uid)
        job = orthanc.forward_dimse(load_into_orthanc(orthanc, originals))
        assert job["State"] == "Success", job

        reader = bearer(issue_token(pg_settings, Role.reader))

        def delivered() -> dict[str, Any] | None:
            response = httpx.get(f"{api_url}/api/v1/studies/{study_uid}/results", headers=reader, timeout=10)
            body: dict[str, Any] = response.json() if response.status_code == 200 else {}
            statuses = [d["status"] for o in body.get("objects", []) for d in o["deliveries"]]
            return body if statuses and set(statuses) == {"delivered"} else None

        results = wait_for("every result object delivered to Orthanc", delivered)
        sent = {o["sop_instance_uid"]: o for o in results["objects"]}
        assert sorted(o["kind"] for o in sent.values()) == ["pm", "pr", "sc", "sr"]
        assert results["turnaround_seconds"] is not None and results["turnaround_seconds"] > 0
        expected_status = "0x0000" if kind == "dimse" else "HTTP 200"
        assert {d["last_status"] for o in sent.values() for d in o["deliveries"]} == {expected_status}

        # Orthanc holds the originals and the four result objects, in the same study.
        in_orthanc = orthanc.study_instances(orthanc.study_id(study_uid))
        assert len(in_orthanc) == len(originals) + len(RESULT_CLASSES)
        for item in in_orthanc:
            data = orthanc.instance_file(item["ID"])
            dataset = pydicom.dcmread(BytesIO(data))
            if dataset.SOPInstanceUID in originals:
                continue
            assert dataset.SOPInstanceUID in sent
            assert RESULT_CLASSES[dataset.SOPClassUID] == sent[dataset.SOPInstanceUID]["kind"]
            assert dataset.StudyInstanceUID == study_uid and dataset.PatientID
            assert dciodvfy_errors(data, tmp_path) == []

        metrics = httpx.get(f"{api_url}/metrics", timeout=10).text
        assert "sightline_study_turnaround_seconds_count 1.0" in metrics
