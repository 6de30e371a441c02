"""The real image, built with podman from the repository's Dockerfile and run as the deployment runs it.

Steps (the recipe is /work/shared/CONTAINERS.md's; see README "Scaling and deployment"):

1. a base image from Debian bookworm's own packages (``mmdebstrap``: python3 3.11, python3-venv,
   ca-certificates), imported as ``localhost/sightline-base:bookworm``: no registry is reachable
   here, so ``python:3.11-slim`` cannot be pulled. Reused when it already exists;
2. ``sightline:test`` built from the Dockerfile with ``--build-arg PYTHON_IMAGE=<that base>``;
   pip inside the build reaches the package registry with the host's CA bundle, passed as a
   build secret (never stored in a layer). After a new image, the builder stage is tagged too
   and ``podman image prune`` drops the stale layers of earlier builds but keeps the layer cache;
3. containers on the host network against this machine's PostgreSQL (a scratch database) and
   Redis (a DB number of its own): ``sightline migrate``, the API, a worker and beat;
4. a DICOM study pushed through the API with an ingest token, until the worklist shows it
   analysed; ``/metrics`` scraped from the API and from the worker's metrics port.

Containers are always removed. Build and run timings are printed in the terminal summary line
``image timings``. Skipped (loudly) where podman is missing; in CI (``CI`` set) that fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import bearer, issue_token, make_settings, mr_slice, scratch_pg_database
from stack import free_port

from service.db.tables import Role

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/sightline-base:bookworm"
BUILDER_IMAGE = "localhost/sightline-builder:test"
IMAGE = "localhost/sightline:test"
REDIS_URL = os.environ.get("SIGHTLINE_TEST_IMAGE_REDIS_URL", "redis://127.0.0.1:6379/11")
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
BUILD_TIMEOUT_S = 1500
WAIT_S = 180.0
TIMINGS: dict[str, float] = {}


def _require(tool: str, why: str) -> None:
    if shutil.which(tool):
        return
    message = f"{tool} is not installed: {why} (apt-get install -y podman runc mmdebstrap uidmap; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must build and run the image: {message}", pytrace=False)
    warnings.warn(f"IMAGE TEST SKIPPED: {message}", pytest.PytestWarning, stacklevel=2)
    pytest.skip(f"IMAGE TEST SKIPPED: {message}")


def _podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}... exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def _image_exists(name: str) -> bool:
    return _podman("image", "exists", name, check=False).returncode == 0


def _image_id(name: str) -> str | None:
    result = _podman("image", "inspect", "--format", "{{.Id}}", name, check=False)
    return result.stdout.strip() or None


def _report(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # fd capture is on during fixture teardown
            reporter.write_line(line)


def _build_base(tmp_path: Path) -> None:
    """Debian bookworm's python3 (3.11) as a base image: no registry is reachable for python:3.11-slim."""
    _require("mmdebstrap", f"{BASE_IMAGE} is not in podman's storage and is built from Debian packages")
    tarball = tmp_path / "base.tar"
    started = time.monotonic()
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(tarball)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    _podman("import", str(tarball), BASE_IMAGE)
    tarball.unlink()
    TIMINGS["base image (mmdebstrap + import)"] = time.monotonic() - started


def _build(*extra: str) -> None:
    args = ["build", "--network", "host", "--format", "docker", *ULIMITS, "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"]
    if CA_BUNDLE.is_file():
        args += ["--secret", f"id=ca-bundle,src={CA_BUNDLE}"]
    _podman(*args, *extra, str(REPO), timeout=BUILD_TIMEOUT_S)


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require("podman", "the image test builds and runs the Dockerfile with podman")
    _require("runc", "podman runs containers with runc here (crun refuses this cgroup layout)")
    reused_base = _image_exists(BASE_IMAGE)
    if not reused_base:
        _build_base(tmp_path_factory.mktemp("base"))
    previous = _image_id(IMAGE)
    started = time.monotonic()
    _build("-t", IMAGE)
    TIMINGS["image build"] = time.monotonic() - started
    unchanged = previous == _image_id(IMAGE)
    if not unchanged:
        # vfs stores every layer in full: drop what no tagged image still uses. The builder stage is
        # tagged first (all its steps are cached by now) so that its layers stay as the cache.
        _build("--target", "builder", "-t", BUILDER_IMAGE)
        _podman("image", "prune", "--force", check=False)
        TIMINGS["tag builder + prune"] = time.monotonic() - started - TIMINGS["image build"]
    state = "unchanged, all layers cached" if unchanged else "new image"
    yield IMAGE
    summary = ", ".join(f"{what} {seconds:.0f} s" for what, seconds in TIMINGS.items())
    base = "reused" if reused_base else "built"
    _report(request.config, f"\nimage timings: {summary} (base {base}; {state})")


class Containers:
    """Containers of one test run: started detached, logs on demand, all removed at the end."""

    def __init__(self, env: dict[str, str], blobs: Path) -> None:
        self.env, self.blobs, self.names = env, blobs, []
        self.suffix = uuid.uuid4().hex[:8]

    def _args(self, name: str) -> list[str]:
        env = [item for key, value in self.env.items() for item in ("-e", f"{key}={value}")]
        volume = ["-v", f"{self.blobs}:/var/lib/sightline/blobs"]
        return ["--name", name, "--network", "host", *ULIMITS, *env, *volume]

    def run(self, role: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        name = f"sightline-test-{role}-{self.suffix}"
        self.names.append(name)
        return _podman("run", "--rm", *self._args(name), IMAGE, *command, timeout=timeout)

    def start(self, role: str, *command: str) -> str:
        name = f"sightline-test-{role}-{self.suffix}"
        self.names.append(name)
        _podman("run", "--detach", *self._args(name), IMAGE, *command)
        return name

    def logs(self, name: str) -> str:
        result = _podman("logs", name, check=False)
        return (result.stdout + result.stderr)[-3000:]

    def running(self, name: str) -> bool:
        result = _podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        return result.stdout.strip() == "true"

    def remove_all(self) -> None:
        for name in reversed(self.names):
            _podman("rm", "--force", "--time", "5", name, check=False)


def _wait(predicate: Callable[[], Any], what: str, diagnose: Callable[[], str], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(0.5)
    return value


def _get(url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    blobs = tmp_path_factory.mktemp("image-blobs")
    blobs.chmod(0o777)  # the containers run as uid 10001
    ports = {"api": free_port(), "worker_metrics": free_port(), "beat_metrics": free_port()}
    with scratch_pg_database("sightline_image") as database_url:
        env = {
            "SIGHTLINE_DATABASE_URL": database_url,
            "SIGHTLINE_BROKER_URL": REDIS_URL,
            "SIGHTLINE_PORT": str(ports["api"]),
            "SIGHTLINE_HOST": "127.0.0.1",
            "SIGHTLINE_WORKER_METRICS_PORT": str(ports["worker_metrics"]),
            "SIGHTLINE_BEAT_METRICS_PORT": str(ports["beat_metrics"]),
            "SIGHTLINE_SERIES_QUIET_SECONDS": "1",
            "SIGHTLINE_SERIES_SWEEP_SECONDS": "1",
            "SIGHTLINE_ONNX_THREADS": "1",
            "SIGHTLINE_LOG_JSON": "true",
        }
        containers = Containers(env, blobs)
        try:
            started = time.monotonic()
            migrate = containers.run("migrate", "sightline", "migrate")
            TIMINGS["migrate container"] = time.monotonic() - started
            started = time.monotonic()
            names = {
                "api": containers.start("api", "sightline", "serve"),
                "worker": containers.start("worker", "sightline", "worker", "--concurrency=1"),
                "beat": containers.start("beat", "sightline", "beat", "--schedule", "/tmp/celerybeat-schedule"),
            }
            url = f"http://127.0.0.1:{ports['api']}"

            def api_ready() -> bool:
                response = _get(f"{url}/healthz")
                assert containers.running(names["api"]), f"the API container exited:\n{containers.logs(names['api'])}"
                return response is not None and response.status_code == 200

            _wait(api_ready, "the API container's /healthz", lambda: containers.logs(names["api"]))
            TIMINGS["API container up"] = time.monotonic() - started
            yield {
                "url": url,
                "ports": ports,
                "names": names,
                "containers": containers,
                "migrate": migrate,
                "settings": make_settings(blobs, database_url=database_url, broker_url=REDIS_URL),
            }
        finally:
            containers.remove_all()
            redis.Redis.from_url(REDIS_URL).flushdb()


def test_image_runs_as_the_service_user_with_the_model_baked_in(image: str) -> None:
    config = _podman("image", "inspect", "--format", "{{.Config.User}} {{json .Config.Cmd}}", image).stdout
    assert config.split()[0] == "10001:10001"
    assert '["sightline","serve"]' in config.replace(" ", "")
    listing = _podman(
        "run", "--rm", "--network", "host", *ULIMITS, image,
        "python", "-c", "import os; print(sorted(os.listdir('/opt/sightline/model-cache')))",
    ).stdout  # fmt: skip
    assert listing.strip() not in ("", "[]"), "the CAM-ready model is not in the image"


def test_migrate_container_upgrades_the_database(stack: dict[str, Any]) -> None:
    assert stack["migrate"].returncode == 0


def test_study_pushed_through_the_api_is_analysed(stack: dict[str, Any]) -> None:
    url, containers, names = stack["url"], stack["containers"], stack["names"]
    ingest, reader = issue_token(stack["settings"], Role.ingest), issue_token(stack["settings"], Role.reader)
    study_uid = f"2.25.{uuid.uuid4().int}"
    dicoms = [mr_slice(study_uid, f"{study_uid}.1", number, lesion=number == 2) for number in (1, 2, 3)]
    files = [("files", (f"slice{i}.dcm", data, "application/dicom")) for i, data in enumerate(dicoms)]
    started = time.monotonic()
    response = httpx.post(f"{url}/api/v1/uploads", files=files, headers=bearer(ingest), timeout=60)
    assert response.status_code == 202, response.text

    def analysed() -> dict[str, Any] | None:
        for name in ("worker", "beat"):
            assert containers.running(names[name]), f"the {name} container exited:\n{containers.logs(names[name])}"
        page = _get(f"{url}/api/v1/worklist", headers=bearer(reader))
        rows = [row for row in (page.json()["items"] if page else []) if row["study_instance_uid"] == study_uid]
        return rows[0] if rows and rows[0]["status"] == "analysed" else None

    def diagnose() -> str:
        return "\n".join(f"----- {role} -----\n{containers.logs(name)}" for role, name in names.items())

    row = _wait(analysed, "the study to be analysed on the worklist", diagnose)
    TIMINGS["upload to analysed"] = time.monotonic() - started
    assert 0.0 <= row["triage_score"] <= 1.0


def test_api_container_serves_metrics(stack: dict[str, Any]) -> None:
    response = _get(f"{stack['url']}/metrics")
    assert response is not None and response.status_code == 200
    assert "# TYPE" in response.text and "sightline" in response.text


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_worker_and_beat_containers_serve_metrics(stack: dict[str, Any], role: str) -> None:
    port = stack["ports"][f"{role}_metrics"]
    response = _wait(
        lambda: _get(f"http://127.0.0.1:{port}/metrics"),
        f"{role} metrics",
        lambda: stack["containers"].logs(stack["names"][role]),
        timeout_s=30,
    ) if _serves_metrics(role) else None  # fmt: skip
    if response is None:
        pytest.skip(f"this image's {role} does not serve metrics (SIGHTLINE_{role.upper()}_METRICS_PORT unknown)")
    assert response.status_code == 200
    assert "# TYPE" in response.text


def _serves_metrics(role: str) -> bool:
    from service.settings import Settings

    return f"{role}_metrics_port" in Settings.model_fields
