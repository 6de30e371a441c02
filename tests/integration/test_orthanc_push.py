"""Orthanc as the PACS: studies stored in a real Orthanc are forwarded to Sightline.

(a) through Orthanc's DICOM modality store (C-STORE SCU) to ``sightline dicom-listener``;
(b) through Orthanc's DICOMweb client (STOW-RS) to ``POST /dicomweb/studies``.
Every instance must be stored once, Orthanc's job must end in success, a re-forward must
not duplicate anything, and an AE title missing from the listener's allow-list is refused.
Real processes on PostgreSQL + Redis (uvicorn API, the listener CLI, Orthanc); no worker.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import bearer, issue_token
from orthanc import (
    ORTHANC_AET,
    OrthancError,
    OrthancProcess,
    load_into_orthanc,
    require_orthanc,
    short_uid,
    study_files,
)
from sqlalchemy import func, select
from stack import REPO_ROOT, ServiceProcess, StartProcess, api_argv, free_port, wait_healthy

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance, Role, Study
from service.settings import Settings

pytestmark = pytest.mark.integration

LISTENER_AET = "SIGHTLINE"


@pytest.fixture()
def ingest_env(pg_settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The API's and the listener's environment: PostgreSQL + Redis, one blob store; Orthanc
    (its own AE title) is the only sender on the listener's allow-list."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(
        SIGHTLINE_DATABASE_URL=pg_settings.database_url,
        SIGHTLINE_BROKER_URL=pg_settings.broker_url,
        SIGHTLINE_STORAGE_DIR=str(pg_settings.storage_dir),
        SIGHTLINE_MODEL_CACHE_DIR=str(tmp_path / "model-cache"),
        SIGHTLINE_LOG_JSON="true",
        SIGHTLINE_DICOM_AE_TITLE=LISTENER_AET,
        SIGHTLINE_DICOM_ALLOWED_CALLING_AETS=json.dumps([ORTHANC_AET]),
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture()
def sightline_api(ingest_env: dict[str, str], start_process: StartProcess) -> str:
    port = free_port()
    process = start_process("api", api_argv(port), ingest_env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return url


@pytest.fixture()
def listener_port(ingest_env: dict[str, str], start_process: StartProcess) -> int:
    """``sightline dicom-listener`` as operators run it, on a free loopback port."""
    port = free_port()
    argv = [sys.executable, "-m", "service.cli", "dicom-listener", "--host", "127.0.0.1", "--port", str(port)]
    process: ServiceProcess = start_process("dicom-listener", argv, ingest_env)
    process.wait_for_log("DICOM listener")
    return port


@pytest.fixture()
def orthanc(tmp_path: Path, pg_settings: Settings, sightline_api: str, listener_port: int) -> Iterator[OrthancProcess]:
    require_orthanc()
    token = issue_token(pg_settings, Role.ingest)
    with OrthancProcess(
        tmp_path / "orthanc",
        sightline_url=sightline_api,
        sightline_token=token,
        sightline_dicom=(LISTENER_AET, listener_port),
    ) as server:
        yield server


def stored_in_sightline(settings: Settings, study_uid: str) -> tuple[list[str], int]:
    """SOP Instance UIDs of the study's instance rows (duplicates kept), and its job count."""
    with unit_of_work(settings) as db:
        sops = list(
            db.scalars(
                select(Instance.sop_instance_uid).join(Study, Instance.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid)
            )
        )  # fmt: skip
        jobs = db.scalar(
            select(func.count()).select_from(AnalysisJob).join(Instance, AnalysisJob.instance_id == Instance.id)
            .join(Study, Instance.study_id == Study.id).where(Study.study_instance_uid == study_uid)
        )  # fmt: skip
    return sorted(sops), int(jobs or 0)


def study_view(api_url: str, reader: str, study_uid: str) -> dict[str, Any]:
    response = httpx.get(f"{api_url}/api/v1/studies/{study_uid}", headers=bearer(reader), timeout=30)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def assert_whole_study(api_url: str, settings: Settings, study_uid: str, files: dict[str, bytes]) -> None:
    sops, jobs = stored_in_sightline(settings, study_uid)
    assert sops == sorted(files), "every instance stored exactly once"
    assert jobs == len(files), "one analysis job per instance, none twice"
    view = study_view(api_url, issue_token(settings, Role.reader), study_uid)
    assert sorted(s["series_instance_uid"] for s in view["series"]) == [f"{study_uid}.1", f"{study_uid}.2"]
    listed = sorted(i["sop_instance_uid"] for s in view["series"] for i in s["instances"])
    assert listed == sorted(files)


def test_orthanc_forwards_a_study_by_c_store(
    orthanc: OrthancProcess, pg_settings: Settings, sightline_api: str
) -> None:
    study_uid = short_uid()
    files = study_files(study_uid)
    orthanc_study = load_into_orthanc(orthanc, files)
    assert orthanc.study_id(study_uid) == orthanc_study
    assert orthanc.find_studies(study_uid) == [orthanc_study]

    job = orthanc.forward_dimse(orthanc_study)
    assert job["State"] == "Success", job
    assert job["Content"]["InstancesCount"] == len(files)
    assert job["Content"]["FailedInstancesCount"] == 0
    assert job["Content"]["LocalAet"] == ORTHANC_AET and job["Content"]["RemoteAet"] == LISTENER_AET
    assert_whole_study(sightline_api, pg_settings, study_uid, files)

    again = orthanc.forward_dimse(orthanc_study)  # a PACS re-sends: same SOP Instance UIDs, same content
    assert again["State"] == "Success", again
    assert again["Content"]["FailedInstancesCount"] == 0
    assert_whole_study(sightline_api, pg_settings, study_uid, files)


# Orthanc's DICOMweb client sends a 73-character multipart boundary (two UUIDs), over RFC
# 2046's 70, and a chunked body without Content-Length: both must be accepted.
def test_orthanc_forwards_a_study_by_stow_rs(
    orthanc: OrthancProcess, pg_settings: Settings, sightline_api: str
) -> None:
    study_uid = short_uid()
    files = study_files(study_uid)
    orthanc_study = load_into_orthanc(orthanc, files)

    job = orthanc.forward_stow([orthanc_study])
    assert job["State"] == "Success", job
    assert int(job["Content"]["InstancesCount"]) == len(files)
    assert_whole_study(sightline_api, pg_settings, study_uid, files)

    again = orthanc.forward_stow([orthanc_study])
    assert again["State"] == "Success", again
    assert_whole_study(sightline_api, pg_settings, study_uid, files)

    # Orthanc still holds the originals, byte for byte what was uploaded.
    instance_id = orthanc.study_instances(orthanc_study)[0]["ID"]
    sop_uid = orthanc.get(f"/instances/{instance_id}/simplified-tags")["SOPInstanceUID"]
    assert orthanc.instance_file(instance_id) == files[sop_uid]


def test_an_ae_title_off_the_allow_list_is_refused(orthanc: OrthancProcess, pg_settings: Settings) -> None:
    study_uid = short_uid()
    files = study_files(study_uid)
    orthanc_study = load_into_orthanc(orthanc, files)

    job = orthanc.forward_dimse(orthanc_study, local_aet="INTRUDER")
    assert job["State"] == "Failure", job
    assert job["Content"]["LocalAet"] == "INTRUDER"
    with pytest.raises(OrthancError):
        orthanc.forward_dimse_sync(orthanc_study, local_aet="INTRUDER")
    assert stored_in_sightline(pg_settings, study_uid) == ([], 0)

    # The same Orthanc under its own (allowed) AE title gets through.
    assert orthanc.forward_dimse(orthanc_study)["State"] == "Success"
    assert stored_in_sightline(pg_settings, study_uid)[0] == sorted(files)
