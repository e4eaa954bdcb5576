"""deploy/: the image, the compose stack and the Kubernetes manifests agree with the code --
settings names and values, `bdi` subcommands, topics, ports, probe paths, GPUs, volumes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs.settings import Settings, load_settings
from tests.helpers.deploy import (
    DEPLOY,
    K8S,
    OWN_PREFIXES,
    REQUIRED,
    SETTING_NAMES,
    bdi_services,
    containers,
    dockerfile_env,
    dockerfile_instructions,
    environment,
    is_bdi_image,
    k8s_documents,
    k8s_files,
    k8s_kind,
    load_compose,
    parse_bdi,
    variables,
)
from tests.helpers.paths import REPO

DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
PORT = DEFAULTS["backend_port"]
TOPIC_SETTINGS = ("kafka_topic_frames", "kafka_topic_verdicts", "kafka_topic_dlq")


def _own(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(OWN_PREFIXES)}


def _valid_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BDI_CONFIG", os.devnull)  # the environment alone, not app.yaml
    return load_settings()


def _configmap() -> dict[str, str]:
    (cm,) = k8s_kind("ConfigMap")
    return {k: str(v) for k, v in cm["data"].items()}


def _deployment(component: str) -> dict[str, Any]:
    (dep,) = [
        d for d in k8s_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]  # fmt: skip
    return dep


def _url_path_and_port(text: str) -> tuple[str, int]:
    """The path and port a health-check one-liner asks for (``%s``: BDI_BACKEND_PORT's
    fallback in the same line)."""
    (m,) = re.finditer(r"http://127\.0\.0\.1:(?P<port>[^/'\"]+)(?P<path>/[A-Za-z0-9_/]*)", text)
    port = m["port"]
    if port == "%s":
        (port,) = re.findall(r"environ\.get\('BDI_BACKEND_PORT', '(\d+)'\)", text)
    return m["path"], int(port)


# --- settings -------------------------------------------------------------------------------
def test_every_variable_set_is_a_setting() -> None:
    compose = load_compose()
    found: dict[str, set[str]] = {
        "compose": {k for s in compose["services"].values() for k in _own(environment(s))},
        "configmap": set(_own(_configmap())),
        "Dockerfile": set(_own(dockerfile_env())),
        "env.example": {
            line.split("=", 1)[0]
            for line in (DEPLOY / "env.example").read_text().splitlines()
            if line.startswith(OWN_PREFIXES)
        },  # fmt: skip
        "secret": {k for s in k8s_kind("Secret") for k in s.get("stringData", {})},
    }
    for _, container in containers():
        found.setdefault("k8s env", set()).update(e["name"] for e in container.get("env", []))
    for where, names in found.items():
        unknown = {n for n in names if n.startswith(OWN_PREFIXES)} - SETTING_NAMES
        assert not unknown, f"{where} sets {sorted(unknown)}, which configs/settings.py lacks"
    assert found["compose"] and found["configmap"] and found["Dockerfile"]


def test_compose_variables_that_are_not_settings_do_not_look_like_settings() -> None:
    """A BDI_* name in compose's own ${...} variables must be a setting it passes on."""
    names = variables((DEPLOY / "compose.yaml").read_text())
    assert {n for n in names if n.startswith(OWN_PREFIXES)} <= SETTING_NAMES


@pytest.mark.parametrize("service", ["api", "consumers"])
def test_compose_settings_are_valid(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _own(environment(load_compose()["services"][service]))
    env = {k: "key" if v == REQUIRED else v for k, v in env.items()}
    settings = _valid_settings(env, monkeypatch)
    assert settings.require_cuda and str(settings.models_dir) == "/data/models"
    assert settings.kafka_bootstrap == "kafka:9092"


def test_configmap_and_image_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _valid_settings(_own(dockerfile_env()), monkeypatch)
    assert image.backend_host == "0.0.0.0" and image.backend_port == PORT
    assert str(image.models_dir) == "/data/models" and str(image.gui_log_dir) == "/data/logs"
    assert image.backbone_weights and image.backbone_weights.startswith("/weights/")
    assert image.require_cuda
    cm = _valid_settings(_configmap(), monkeypatch)
    assert cm.backend_host == "0.0.0.0" and cm.backend_port == PORT and cm.require_cuda


def test_api_key_is_required_and_secret_is_a_placeholder() -> None:
    api = environment(load_compose()["services"]["api"])
    assert api["BDI_API_KEY"] == REQUIRED  # ${BDI_API_KEY:?...}: compose refuses to start without
    (secret,) = k8s_kind("Secret")
    assert "REPLACE" in secret["stringData"]["BDI_API_KEY"]
    (api_container,) = [c for _, c in containers() if c["name"] == "api"]
    refs = [e["secretRef"]["name"] for e in api_container["envFrom"] if "secretRef" in e]
    assert refs == [secret["metadata"]["name"]]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]


# --- commands -------------------------------------------------------------------------------
def _commands() -> dict[str, list[str]]:
    """Where the image is run -> the bdi arguments it gets."""
    out: dict[str, list[str]] = {}
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["bdi"]
    out["Dockerfile CMD"] = json.loads(instructions["CMD"])
    for name, service in bdi_services(load_compose()).items():
        command = service.get("command", out["Dockerfile CMD"])
        out[f"compose {name}"] = shlex.split(command) if isinstance(command, str) else command
    for dep, container in containers():
        if is_bdi_image(container["image"]):
            assert container.get("command", ["bdi"]) == ["bdi"]
            out[f"k8s {dep['metadata']['name']}"] = container["args"]
    return out


def test_every_bdi_command_is_a_real_subcommand() -> None:
    commands = _commands()
    for where, argv in commands.items():
        try:
            args = parse_bdi(argv)
        except SystemExit:
            pytest.fail(f"{where}: `bdi {' '.join(argv)}` is not accepted by the command line")
        assert callable(args.func), where
    used = {argv[0] for argv in commands.values()}
    assert used == {"serve", "consume"}


def test_consume_is_registered() -> None:
    assert parse_bdi(["consume"]).command == "consume"


# --- Kafka topics ---------------------------------------------------------------------------
def _created_topics() -> dict[str, str]:
    init = load_compose()["services"]["kafka-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    return dict(re.findall(r"--topic (\S+) --partitions (\S+)", script))


def test_compose_topics_match_the_settings() -> None:
    created = _created_topics()
    for name, service in bdi_services(load_compose()).items():
        env = environment(service)
        for field in TOPIC_SETTINGS:
            assert env[f"BDI_{field.upper()}"] == DEFAULTS[field], (name, field)
            assert DEFAULTS[field] in created
        assert env["BDI_KAFKA_TOPIC_HEATMAPS"] in created
    assert all(int(p) >= 1 for p in created.values())
    frames = int(created[DEFAULTS["kafka_topic_frames"]])
    consumers = int(load_compose()["services"]["consumers"]["deploy"]["replicas"])
    assert frames >= consumers  # replicas beyond the partitions would idle


def test_configmap_topics_match_the_settings() -> None:
    cm = _configmap()
    for field in TOPIC_SETTINGS:
        assert cm[f"BDI_{field.upper()}"] == DEFAULTS[field]
    assert cm["BDI_KAFKA_TOPIC_HEATMAPS"] in _created_topics()


def test_kafka_accepts_the_largest_frame_and_dead_letter() -> None:
    from consumers.runner import HEADROOM

    kafka = environment(load_compose()["services"]["kafka"])
    largest = int(DEFAULTS["max_frame_mb"] * 1024 * 1024) + HEADROOM
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= largest
    listeners = kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "//kafka:9092" in listeners  # what BDI_KAFKA_BOOTSTRAP names inside the network


# --- ports and paths ------------------------------------------------------------------------
def test_ports_match_backend_port() -> None:
    compose = load_compose()
    api = compose["services"]["api"]
    assert [p.split(":")[-1] for p in api["ports"]] == [str(PORT)]
    assert environment(api)["BDI_BACKEND_PORT"] == str(PORT)
    assert ("EXPOSE", str(PORT)) in dockerfile_instructions()
    assert _configmap()["BDI_BACKEND_PORT"] == str(PORT)
    dep = _deployment("api")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"http": PORT}
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)
    (service,) = k8s_kind("Service")
    assert [named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]] == [PORT]
    assert (
        service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for s in job.get("static_configs", [])
               for t in s["targets"]]  # fmt: skip
    assert targets == [f"api:{PORT}"]


def test_health_checks_and_probes_use_served_paths(served_paths: set[str]) -> None:
    """API probes point at paths the app serves; consumer probes at the consumer's health
    port (``consumers/health.py``: /health and /metrics)."""
    checked: dict[str, str] = {}
    healthcheck = dict(dockerfile_instructions())["HEALTHCHECK"]
    checked["Dockerfile HEALTHCHECK"], port = _url_path_and_port(healthcheck)
    assert port == PORT
    api_test = " ".join(load_compose()["services"]["api"]["healthcheck"]["test"])
    checked["compose api healthcheck"], port = _url_path_and_port(api_test)
    assert port == PORT
    api = _deployment("api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        checked[f"api {probe}"] = container[probe]["httpGet"]["path"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    checked["api scrape"] = api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    checked["prometheus bdi-api"] = jobs["bdi-api"]["metrics_path"]
    for where, path in checked.items():
        assert path in served_paths, f"{where} points at {path}, which the API does not serve"
    assert jobs["bdi-consumers"]["metrics_path"] in CONSUMER_PATHS


CONSUMER_PATHS = {"/health", "/metrics"}  # consumers/health.py HealthServer._answer


def test_consumer_probes_use_the_consumer_health_port() -> None:
    dep = _deployment("consumers")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    port = int(env["BDI_CONSUMER_HEALTH_PORT"])
    assert env["BDI_CONSUMER_HEALTH_HOST"] == "0.0.0.0"  # probed from outside the pod
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"health": port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "health"}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] in CONSUMER_PATHS
    service = load_compose()["services"]["consumers"]
    compose_env = environment(service)
    assert compose_env["BDI_CONSUMER_HEALTH_PORT"] == str(port)
    path, compose_port = _url_path_and_port(" ".join(service["healthcheck"]["test"]))
    assert (path, compose_port) == ("/health", port)
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "bdi-consumers"]
    assert job["dns_sd_configs"][0]["port"] == port


def test_probe_paths_answer_without_the_api_key(tmp_path: Path) -> None:
    """Probes and scrapers send no X-API-Key: their paths must stay open."""
    from fastapi.testclient import TestClient

    from edge.api.app import create_app
    from tests.helpers.settings import tiny_settings

    app = create_app(tiny_settings(models_dir=tmp_path / "models", api_key="secret"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/manifest").status_code == 401  # the key does guard the rest


# --- GPUs, volumes, image -------------------------------------------------------------------
def test_api_and_consumers_get_a_gpu() -> None:
    for name, service in bdi_services(load_compose()).items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
    for dep, container in containers():
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1, dep["metadata"]["name"]
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_compose_volumes_match_the_settings() -> None:
    compose = load_compose()
    for name, service in bdi_services(compose).items():
        env = environment(service)
        mounts = {}
        for v in service["volumes"]:
            if isinstance(v, str):
                source, target = v.split(":")[:2]
                mounts[target] = {"source": source, "read_only": v.endswith(":ro")}
            else:
                mounts[v["target"]] = v
        assert mounts[env["BDI_MODELS_DIR"]]["source"] in compose["volumes"], name
        assert mounts[env["BDI_GUI_LOG_DIR"]]["source"] in compose["volumes"], name
        weights_dir = str(Path(env["BDI_BACKBONE_WEIGHTS"]).parent)
        assert mounts[weights_dir]["read_only"] is True, name
        assert mounts[weights_dir]["type"] == "bind"
    assert bdi_services(compose)["api"]["volumes"] == bdi_services(compose)["consumers"]["volumes"]


def test_k8s_volumes_and_references_resolve() -> None:
    cm = _configmap()
    claims = {p["metadata"]["name"]: p for p in k8s_kind("PersistentVolumeClaim")}
    assert claims["bdi-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_documents() if "metadata" in d}
    for dep, container in containers():
        spec = dep["spec"]["template"]["spec"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= (
            dep["spec"]["template"]["metadata"]["labels"].items()
        )
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        models = volumes[mounts[cm["BDI_MODELS_DIR"]]["name"]]
        assert models["persistentVolumeClaim"]["claimName"] == "bdi-models"
        weights = mounts[str(Path(cm["BDI_BACKBONE_WEIGHTS"]).parent)]
        assert weights["readOnly"] is True
        assert volumes[weights["name"]]["persistentVolumeClaim"]["claimName"] in claims
        assert cm["BDI_GUI_LOG_DIR"] in mounts
        for ref in container["envFrom"]:
            if "configMapRef" in ref:
                assert ("ConfigMap", ref["configMapRef"]["name"]) in names


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in k8s_files()} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    for doc in k8s_documents():
        assert "namespace" not in doc.get("metadata", {}), doc.get("kind")


def test_image_installs_the_packages_and_keeps_weights_out() -> None:
    import tomllib

    instructions = dockerfile_instructions()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        rest.split()[0] for word, rest in instructions if word == "COPY" and "--from" not in rest
    }
    assert packages <= copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {f"!{p}/" for p in packages} <= set(ignore)
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip uninstall -y faiss-cpu" in runs and "faiss-gpu==" in runs
    assert runs.index("pip uninstall -y faiss-cpu") < runs.index("faiss-gpu==")
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    assert args["FAISS_GPU_VERSION"].startswith("1.15.")
    assert not any(".pth" in rest or "weights" in rest.split()[0]
                   for word, rest in instructions if word in ("COPY", "ADD"))  # fmt: skip
    assert dict(instructions)["USER"] not in ("root", "0")
    assert '"/data/models"' in dict(instructions)["VOLUME"]


# --- compose itself, where a Docker engine answers ----------------------------------------------
def _docker_engine() -> str | None:
    """Why the compose check cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=10)
        compose = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "docker does not answer"
    if info.returncode:
        return "no Docker engine answers (docker info failed)"
    if compose.returncode:
        return "docker compose plugin missing"
    return None


def test_docker_compose_accepts_the_file() -> None:
    reason = _docker_engine()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "BDI_API_KEY": "test-key"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
