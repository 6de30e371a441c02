"""A real Orthanc (Debian's ``/usr/sbin/Orthanc`` + the DICOMweb plugin) as the PACS peer of tests and benches.

``OrthancProcess`` writes a configuration into a scratch directory, starts Orthanc bound to
127.0.0.1 (free HTTP and DICOM ports, no remote access, no authentication), logs to a file
there, waits until its REST API answers and stops it with SIGTERM (then SIGKILL). Its
DICOMweb client knows Sightline as the server ``sightline`` (``<sightline_url>/dicomweb/``
with a bearer token) and its DICOM modality list holds Sightline's listener as
``sightline``; both can be changed at run time (``set_sightline_modality``).

Usage::

    with OrthancProcess(tmp_path / "orthanc", sightline_url=api_url, sightline_token=token,
                        sightline_dicom=("SIGHTLINE", 11112)) as orthanc:
        study_id = orthanc.upload(data)["ParentStudy"]
        job = orthanc.forward_dimse([study_id])          # C-STORE to Sightline's listener
        job = orthanc.forward_stow([study_id])           # STOW-RS to Sightline's /dicomweb/studies
        assert job["State"] == "Success"

``require_orthanc()`` skips (loudly) when Orthanc is not installed, and fails under ``CI``,
the same rule ``tests/conftest.py`` applies to PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from helpers import mr_slice
from stack import ServiceProcess, free_port

ORTHANC_BIN = os.environ.get("SIGHTLINE_TEST_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get("SIGHTLINE_TEST_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"
START_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 120.0


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (binary or DICOMweb plugin absent), or ``None``."""
    if not (Path(ORTHANC_BIN).is_file() or shutil.which(ORTHANC_BIN)):
        return f"Orthanc is not installed ({ORTHANC_BIN}; apt-get install orthanc)"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def require_orthanc() -> None:
    """Skip the calling test loudly when Orthanc is absent; under ``CI`` fail instead (never skip there)."""
    reason = orthanc_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Orthanc tests: {reason}", pytrace=False)
    pytest.skip(f"ORTHANC TESTS SKIPPED: {reason}")


class OrthancError(RuntimeError):
    """Orthanc answered a REST call with an error status; the message quotes its answer."""


class OrthancProcess:
    """One Orthanc server on 127.0.0.1; a context manager, and ``stop`` is idempotent."""

    def __init__(
        self,
        workdir: Path,
        *,
        sightline_url: str | None = None,
        sightline_token: str | None = None,
        sightline_dicom: tuple[str, int] | None = None,
        aet: str = ORTHANC_AET,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        workdir.mkdir(parents=True, exist_ok=True)
        config = self._config(sightline_url, sightline_token, sightline_dicom)
        config.update(extra_config or {})
        self.config_path.write_text(json.dumps(config, indent=2))
        self.process: ServiceProcess | None = None
        self.client = httpx.Client(base_url=self.url, timeout=JOB_TIMEOUT_S)

    def _config(
        self, sightline_url: str | None, sightline_token: str | None, sightline_dicom: tuple[str, int] | None
    ) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        if sightline_url is not None:
            server: dict[str, Any] = {"Url": f"{sightline_url.rstrip('/')}/dicomweb/"}
            if sightline_token is not None:
                server["HttpHeaders"] = {"Authorization": f"Bearer {sightline_token}"}
            servers["sightline"] = server
        modalities: dict[str, Any] = {}
        if sightline_dicom is not None:
            modalities["sightline"] = [sightline_dicom[0], "127.0.0.1", sightline_dicom[1]]
        storage = self.workdir / "storage"
        return {
            "Name": "sightline-test-orthanc",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # with no user: loopback clients only
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,  # any SCU may C-STORE into it (storescu in the bench)
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,  # SR, SC, PR and anything else Sightline may send back
            "DicomModalities": modalities,
            "DicomModalitiesInDatabase": False,
            "DicomAssociationCloseDelay": 0,  # release each SCU association at once (no reuse between calls)
            "DicomScuTimeout": 30,
            "HttpTimeout": 60,  # the DICOMweb client's (STOW-RS to Sightline)
            "SaveJobs": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Servers": servers},
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OrthancProcess:
        reason = orthanc_missing()
        if reason is not None:
            raise RuntimeError(reason)
        argv = [ORTHANC_BIN, "--no-jobs", str(self.config_path)]
        # Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set: without it every
        # C-STORE Orthanc receives waits ~40 ms on delayed ACKs (47 ms/instance measured).
        env = {**os.environ, "TCP_NODELAY": os.environ.get("TCP_NODELAY", "1")}
        self.process = ServiceProcess("orthanc", argv, env, self.log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if self.client.get("/system", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.proc.poll() is not None or time.monotonic() > deadline:
                log = self.process.log_text()[-3000:]
                self.stop()
                raise RuntimeError(f"Orthanc did not come up:\n{log}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s (``ServiceProcess.stop``); prints the log tail."""
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.client.close()

    def __enter__(self) -> OrthancProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- REST --------------------------------------------------------------------------------

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise OrthancError(f"{response.request.method} {response.request.url.path}: "
                               f"HTTP {response.status_code} {response.text[:2000]}")  # fmt: skip
        return response.json() if response.content else None

    def get(self, path: str) -> Any:
        return self._json(self.client.get(path))

    def post(self, path: str, body: Any) -> Any:
        if isinstance(body, bytes | str):
            return self._json(self.client.post(path, content=body))
        return self._json(self.client.post(path, json=body))

    def upload(self, data: bytes) -> dict[str, Any]:
        """``POST /instances``: {"ID", "ParentStudy", "ParentSeries", "Status": "Success" | "AlreadyStored", ...}."""
        answer: dict[str, Any] = self.post("/instances", data)
        return answer

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return list(self.get("/instances"))

    def statistics(self) -> dict[str, Any]:
        """``GET /statistics``: CountStudies, CountSeries, CountInstances, TotalDiskSize, ..."""
        return dict(self.get("/statistics"))

    def study_id(self, study_uid: str) -> str | None:
        """The Orthanc ID of the study with this StudyInstanceUID, or ``None`` (``POST /tools/lookup``)."""
        for match in self.post("/tools/lookup", study_uid):
            if match["Type"] == "Study":
                return str(match["ID"])
        return None

    def find_studies(self, study_uid: str) -> list[str]:
        """``POST /tools/find`` at study level: the Orthanc IDs of the matching studies."""
        return list(self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}))

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """The instances of a study, with their MainDicomTags (SOPInstanceUID, InstanceNumber, ...)."""
        return list(self.get(f"/studies/{study_id}/instances"))

    def instance_file(self, instance_id: str) -> bytes:
        response = self.client.get(f"/instances/{instance_id}/file")
        if response.status_code >= 400:
            self._json(response)
        return response.content

    def delete_all(self) -> None:
        """Delete every patient (and so every study and instance): fresh storage between bench rounds."""
        for patient in self.get("/patients"):
            self._json(self.client.delete(f"/patients/{patient}"))

    # -- jobs and forwarding -----------------------------------------------------------------

    def wait_job(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until it ends; the job (``State`` is "Success" or "Failure")."""
        deadline = time.monotonic() + timeout_s
        while True:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc job {job_id} still {job['State']} after {timeout_s} s")
            time.sleep(0.1)

    def forward_dimse(
        self, resources: str | list[str], modality: str = "sightline", *, local_aet: str | None = None
    ) -> dict[str, Any]:
        """C-STORE ``resources`` (Orthanc IDs of studies, series or instances) to a modality, as an
        asynchronous job waited for; the ended job. ``local_aet`` overrides Orthanc's calling AE title."""
        body: dict[str, Any] = {"Resources": _listed(resources), "Synchronous": False}
        if local_aet is not None:
            body["LocalAet"] = local_aet
        started = self.post(f"/modalities/{modality}/store", body)
        return self.wait_job(str(started["ID"]))

    def forward_dimse_sync(
        self, resources: str | list[str], modality: str = "sightline", *, local_aet: str | None = None
    ) -> dict[str, Any]:
        """The synchronous form: Orthanc's answer (``InstancesCount``, ``FailedInstancesCount``, ...);
        raises ``OrthancError`` when the store fails (association refused, for one)."""
        body: dict[str, Any] = {"Resources": _listed(resources), "Synchronous": True}
        if local_aet is not None:
            body["LocalAet"] = local_aet
        return dict(self.post(f"/modalities/{modality}/store", body))

    def forward_stow(self, resources: str | list[str], server: str = "sightline") -> dict[str, Any]:
        """STOW-RS ``resources`` to a DICOMweb server as an asynchronous job waited for; the ended job."""
        started = self.post(
            f"/dicom-web/servers/{server}/stow", {"Resources": _listed(resources), "Synchronous": False}
        )
        return self.wait_job(str(started["ID"]))

    def set_sightline_modality(self, aet: str, port: int, name: str = "sightline") -> None:
        """(Re)define a DICOM modality at run time (``PUT /modalities/{name}``)."""
        response = self.client.put(f"/modalities/{name}", json={"AET": aet, "Host": "127.0.0.1", "Port": port})
        self._json(response)


def _listed(resources: str | list[str]) -> list[str]:
    return [resources] if isinstance(resources, str) else list(resources)


def short_uid() -> str:
    """A study UID short enough that ``<study>.<series>.<slice>`` stays within 64 characters."""
    return f"2.25.{uuid.uuid4().int >> 64}"


def study_files(study_uid: str, slices: int = 3) -> dict[str, bytes]:
    """A 2-series MR study: ``slices`` plain slices, then ``slices`` with a lesion; by SOP Instance UID."""
    files: dict[str, bytes] = {}
    for number, lesion in ((1, False), (2, True)):
        series_uid = f"{study_uid}.{number}"
        for index in range(1, slices + 1):
            files[f"{series_uid}.{index}"] = mr_slice(study_uid, series_uid, index, lesion=lesion, SeriesNumber=number)
    return files


def load_into_orthanc(orthanc: OrthancProcess, files: dict[str, bytes]) -> str:
    """Upload every file; the Orthanc ID of their one study."""
    answers = [orthanc.upload(data) for data in files.values()]
    assert {answer["Status"] for answer in answers} == {"Success"}
    study_ids = {str(answer["ParentStudy"]) for answer in answers}
    assert len(study_ids) == 1
    return study_ids.pop()
