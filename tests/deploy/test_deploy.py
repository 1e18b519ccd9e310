"""Static checks of deploy/: what can be validated without Docker or a cluster.

Every compose file and Kubernetes manifest parses; every ``STREAM_AE_*`` variable they set is a
field of :class:`stream_ae.settings.Settings` (the worker refuses unknown ones at start-up) and
the shipped configurations load; probes and health checks use the worker's port and paths; the
grace periods exceed a poll batch; the images install the project with the README's extras;
every command line is accepted by the real argument parsers; the alert rules use documented
metrics. Each test names the file and the value to fix when it fails.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_ae.settings import ENV_PREFIX, Settings, field_names, load_settings
from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.paths import REPO_ROOT
from tests.support.tiny_model import TinyModel
from tests.support.worker_process import WorkerProcess, worker_config

ROOT = REPO_ROOT
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_FILES = [COMPOSE, DEPLOY / "compose.gpu.yaml"]
DOCKERFILE_CPU = DEPLOY / "Dockerfile"
DOCKERFILE_GPU = DEPLOY / "Dockerfile.gpu"
RULES = DEPLOY / "prometheus-rules.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Manifests kept next to the others but deliberately not applied by kustomization.yaml.
K8S_OPTIONAL = {"secret.example.yaml", "podmonitor.yaml"}
# The Dockerfile's build context is an allow-list; these must never be re-included.
NEVER_IN_IMAGE = (".env", ".venv", ".git")

_ENV_NAME = re.compile(r"\bSTREAM_AE_[A-Z0-9_]+\b")
_METRIC_NAME = re.compile(r"\bstream_ae_[a-z0-9_]+\b")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_COMPOSE_VAR = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")


def _default(field: str) -> Any:
    return Settings.model_fields[field].default


MAX_BATCH_S_DEFAULT = float(_default("max_batch_processing_s"))
METRICS_PORT_DEFAULT = int(_default("metrics_port"))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose(path: Path = COMPOSE) -> dict[str, Any]:
    (doc,) = _load_all(path)
    assert isinstance(doc, dict)
    return doc


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in _load_all(path)]


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for path, doc in _k8s_docs()
        if path.name != "kustomization.yaml"
        and doc.get("kind") == kind
        and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} under deploy/k8s, got {len(found)}"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment and CronJob."""
    for _, doc in _k8s_docs():
        if doc.get("kind") == "Deployment":
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc.get("kind") == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for workload, spec in _pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{workload}/{container['name']}", container


def _interpolate(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` resolved to its default and ``$$`` to ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        assert match.group(2) is not None, f"{match.group(0)} has no default in compose.yaml"
        return match.group(2)

    return _COMPOSE_VAR.sub(one, str(value))


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _interpolate(v) for k, v in env.items()}


def _is_stream_ae_service(service: dict[str, Any]) -> bool:
    """Services of the stream-ae image (compose builds it for each of them)."""
    return "build" in service


def _worker_service(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    workers = [
        (name, svc)
        for name, svc in compose["services"].items()
        if list(svc.get("command") or [])[:2] == ["stream-ae", "worker"]
    ]
    assert len(workers) == 1, "compose.yaml must have exactly one service running the worker"
    return workers[0]


def _k8s_settings_env() -> dict[str, str]:
    """What a worker pod sees: the ConfigMap, the example Secret and the container's env."""
    env = dict(_k8s("ConfigMap", "stream-ae-config")["data"])
    env.update(_k8s("Secret", "stream-ae-credentials")["stringData"])
    worker = _k8s("Deployment", "stream-ae-worker")["spec"]["template"]["spec"]["containers"][0]
    for item in worker.get("env", []):
        env[item["name"]] = item.get("value", "pod-0")  # valueFrom: any plausible value
    return {k: str(v) for k, v in env.items()}


def _duration_s(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


# --------------------------------------------------------------------------------------------
# Everything parses, and the manifests are namespace-agnostic
# --------------------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = _yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"compose.yaml", "prometheus.yml", "prometheus-rules.yml"} <= names
    assert "k8s/kustomization.yaml" in names
    for path in files:
        docs = _load_all(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


def test_k8s_manifests_are_complete_and_namespace_agnostic() -> None:
    kinds = set()
    for path, doc in _k8s_docs():
        if path.name == "kustomization.yaml":
            continue
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{path.name}: no {key}"
        assert doc["metadata"].get("name"), f"{path.name}: {doc['kind']} without a name"
        assert "namespace" not in doc["metadata"], (
            f"{path.name}: {doc['kind']} sets metadata.namespace; choose it when applying"
        )
        kinds.add(doc["kind"])
    required = {"ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject", "CronJob"}
    assert required | {"PersistentVolumeClaim"} <= kinds


def test_kustomization_applies_every_manifest_but_the_optional_ones() -> None:
    kustomization = _load_all(K8S / "kustomization.yaml")[0]
    assert "namespace" not in kustomization, "the base must stay namespace-agnostic"
    resources = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources <= on_disk, f"kustomization.yaml lists missing files: {resources - on_disk}"
    unlisted = on_disk - resources
    assert unlisted == K8S_OPTIONAL, (
        f"manifests neither applied nor documented as optional: {unlisted - K8S_OPTIONAL}"
    )
    image_names = {image["name"] for image in kustomization.get("images", [])}
    for where, container in _containers():
        assert container["image"].split(":")[0] in image_names, (
            f"{where}: image {container['image']} is not set by kustomization.yaml images"
        )


# --------------------------------------------------------------------------------------------
# STREAM_AE_* variables are settings, and the shipped configurations load
# --------------------------------------------------------------------------------------------


def _structured_env_names() -> Iterator[tuple[str, str]]:
    """(where, name) of every environment variable set by compose and the manifests."""
    for path in COMPOSE_FILES:
        for service_name, service in _compose(path)["services"].items():
            for name in _compose_env(service):
                yield f"{path.name}:{service_name}", name
    for path, doc in _k8s_docs():
        if doc.get("kind") == "ConfigMap":
            for name in doc.get("data", {}):
                yield f"{path.name}:ConfigMap data", name
        if doc.get("kind") == "Secret":
            for section in ("data", "stringData"):
                for name in doc.get(section, {}) or {}:
                    yield f"{path.name}:Secret {section}", name
    for where, container in _containers():
        for item in container.get("env", []):
            yield where, item["name"]


def test_every_stream_ae_variable_under_deploy_is_a_setting() -> None:
    known = field_names()
    seen: set[str] = set()
    # Text scan: files, comments included (a commented example is copied into real configs).
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in _ENV_NAME.findall(path.read_text()):
            seen.add(name)
            assert name[len(ENV_PREFIX) :].lower() in known, (
                f"{path.relative_to(ROOT)} references {name}, which is not a field of "
                "stream_ae.settings.Settings; the worker would refuse to start"
            )
    # Structured scan: any case, since the settings are case-insensitive.
    for where, name in _structured_env_names():
        if name.upper().startswith(ENV_PREFIX):
            seen.add(name.upper())
            assert name[len(ENV_PREFIX) :].lower() in known, f"{where}: {name} is not a setting"
    # The scan found the configuration, so passing is not vacuous.
    assert {
        "STREAM_AE_BOOTSTRAP_SERVERS",
        "STREAM_AE_REDIS_URL",
        "STREAM_AE_REDIS_PASSWORD",
        "STREAM_AE_SASL_PASSWORD",
        "STREAM_AE_MODEL_PATH",
        "STREAM_AE_METRICS_PORT",
    } <= seen


def _load_as_worker(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Settings:
    """Load settings from exactly ``env``, the way the worker does at start-up."""
    import os

    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp)  # no stray .env file
    settings_env = {k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)}
    return load_settings(environ=settings_env)


def test_compose_settings_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        if _is_stream_ae_service(service):
            settings = _load_as_worker(_compose_env(service), monkeypatch, tmp_path)
            assert settings.bootstrap_servers == "kafka:9092", name
            assert settings.redis_password is not None, f"{name}: Redis without a password"


def test_k8s_settings_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _load_as_worker(_k8s_settings_env(), monkeypatch, tmp_path)
    assert settings.redis_password is not None
    assert settings.worker_id == "pod-0"


# --------------------------------------------------------------------------------------------
# Health: probes and health checks use the worker's port and paths
# --------------------------------------------------------------------------------------------


def _package_source() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "stream_ae").rglob("*.py"))


def _probed_paths() -> set[str]:
    """Every HTTP path that a probe, a health check or a scrape asks the worker for."""
    pod = _k8s("Deployment", "stream-ae-worker")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    paths = {
        container[kind]["httpGet"]["path"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    paths.add(pod["metadata"]["annotations"]["prometheus.io/path"])
    paths |= {e["path"] for e in _k8s("PodMonitor")["spec"]["podMetricsEndpoints"]}
    scrapes = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    paths |= {job.get("metrics_path", "/metrics") for job in scrapes}  # Prometheus's default
    for dockerfile in (DOCKERFILE_CPU, DOCKERFILE_GPU):
        checks = re.findall(r"http://127\.0\.0\.1:%s(/[\w/]+)", dockerfile.read_text())
        assert checks, f"{dockerfile.name}: no HEALTHCHECK request found"
        paths |= set(checks)
    return paths


@pytest.mark.integration
@pytest.mark.slow
def test_probe_paths_are_served_by_the_worker(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    """A worker process (``python -m stream_ae worker``), started and ready, answers 200 on
    every path the manifests, the images and Prometheus ask for, and 404 on any other."""
    paths = _probed_paths()
    assert {"/healthz", "/readyz", "/metrics"} <= paths, paths
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model=tiny_model,
        input_topic=topic_factory(1, prefix="in"),
        alerts_topic=topic_factory(1, prefix="alerts"),
        dlq_topic=topic_factory(1, prefix="dlq"),
    )
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        answers = {path: worker.get(path)[0] for path in sorted(paths)}
        assert answers == dict.fromkeys(sorted(paths), 200), worker.tail()
        assert worker.get("/not-a-probe")[0] == 404
    finally:
        worker.stop()


def test_k8s_worker_probes() -> None:
    env = _k8s_settings_env()
    port = int(env.get("STREAM_AE_METRICS_PORT", METRICS_PORT_DEFAULT))
    pod = _k8s("Deployment", "stream-ae-worker")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        target = get["port"]
        return get["path"], ports[target] if isinstance(target, str) else target

    assert probe("livenessProbe") == ("/healthz", port)
    assert probe("readinessProbe") == ("/readyz", port)
    assert probe("startupProbe") == ("/healthz", port)
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == port
    monitor = _k8s("PodMonitor")
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(ports)

    # A batch that runs to the limit must not look like a hung process.
    max_batch_s = float(env.get("STREAM_AE_MAX_BATCH_PROCESSING_S", MAX_BATCH_S_DEFAULT))
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > max_batch_s


def _healthcheck(dockerfile: Path) -> str:
    text = _joined_lines(dockerfile)
    (line,) = [ln for ln in text if ln.startswith("HEALTHCHECK")]
    return line


def test_dockerfile_healthchecks_hit_healthz_on_the_metrics_port() -> None:
    for dockerfile in (DOCKERFILE_CPU, DOCKERFILE_GPU):
        check = _healthcheck(dockerfile)
        assert "urllib.request" in check and "/healthz" in check, dockerfile.name
        match = re.search(r"STREAM_AE_METRICS_PORT['\"],\s*['\"](\d+)['\"]", check)
        assert match, f"{dockerfile.name}: the healthcheck must follow STREAM_AE_METRICS_PORT"
        assert int(match.group(1)) == METRICS_PORT_DEFAULT, dockerfile.name


def test_compose_worker_metrics_are_exposed_and_scraped() -> None:
    compose = _compose()
    name, worker = _worker_service(compose)
    port = int(_compose_env(worker).get("STREAM_AE_METRICS_PORT", METRICS_PORT_DEFAULT))
    assert str(port) in [str(p) for p in worker.get("expose", [])]
    assert "healthcheck" not in worker, "the worker uses the image's /healthz check"
    prometheus = _load_all(DEPLOY / "prometheus.yml")[0]
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "stream-ae-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == [name] and sd["port"] == port
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Services of the image that are not the worker have no /healthz to answer.
    for other, service in compose["services"].items():
        if _is_stream_ae_service(service) and other != name:
            assert service.get("healthcheck", {}).get("disable") is True, other


# --------------------------------------------------------------------------------------------
# Shutdown: grace periods exceed a poll batch
# --------------------------------------------------------------------------------------------


def test_k8s_grace_period_exceeds_a_poll_batch() -> None:
    env = _k8s_settings_env()
    max_batch_s = float(env.get("STREAM_AE_MAX_BATCH_PROCESSING_S", MAX_BATCH_S_DEFAULT))
    spec = _k8s("Deployment", "stream-ae-worker")["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > max(max_batch_s, MAX_BATCH_S_DEFAULT), (
        f"terminationGracePeriodSeconds {grace} must exceed max_batch_processing_s "
        f"{max_batch_s}: SIGTERM lets the current batch finish and commit"
    )


def test_compose_grace_period_exceeds_a_poll_batch() -> None:
    _, worker = _worker_service(_compose())
    env = _compose_env(worker)
    max_batch_s = float(env.get("STREAM_AE_MAX_BATCH_PROCESSING_S", MAX_BATCH_S_DEFAULT))
    grace_s = _duration_s(worker.get("stop_grace_period", "10s"))  # docker's default: 10 s
    assert grace_s > max(max_batch_s, MAX_BATCH_S_DEFAULT)


def test_duration_parser() -> None:
    assert _duration_s("45s") == 45 and _duration_s("1m30s") == 90 and _duration_s(60) == 60
    with pytest.raises(AssertionError):
        _duration_s("45 seconds")


# --------------------------------------------------------------------------------------------
# Topology: consumer group, topics, registry, GPUs
# --------------------------------------------------------------------------------------------


def test_compose_topology() -> None:
    compose = _compose()
    services = compose["services"]
    name, worker = _worker_service(compose)
    env = _compose_env(worker)
    # Kafka in KRaft mode, from the official image.
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in str(s.get("image", "")) for s in services.values())
    # Two workers of one group, with partitions to share.
    assert worker["deploy"]["replicas"] == 2
    init = services["topic-init"]
    partitions = int(_compose_env(init)["INPUT_PARTITIONS"])
    assert partitions >= worker["deploy"]["replicas"]
    for topic_var in ("STREAM_AE_INPUT_TOPICS", "STREAM_AE_ALERTS_TOPIC", "STREAM_AE_DLQ_TOPIC"):
        assert _compose_env(init)[topic_var] == env[topic_var], topic_var
        assert f"$${topic_var}" in init["command"][0], f"topic-init does not create {topic_var}"
    groups = {
        _compose_env(s).get("STREAM_AE_GROUP_ID")
        for s in services.values()
        if _is_stream_ae_service(s)
    }
    assert groups == {env["STREAM_AE_GROUP_ID"]}
    # The registry volume: written by the trainers, read-only for the workers, at model_path.
    mount = f"registry:{env['STREAM_AE_MODEL_PATH']}"
    assert f"{mount}:ro" in worker["volumes"]
    for writer in ("bootstrap-train", "trainer"):
        assert mount in services[writer]["volumes"], writer
    assert "registry" in compose["volumes"]
    assert worker["depends_on"]["bootstrap-train"]["condition"] == "service_completed_successfully"
    assert services["trainer"]["command"][:3] == ["stream-ae-train", "refit", "--every"]
    # The first model is fitted on a replay of the input topic.
    bootstrap = services["bootstrap-train"]["command"]
    assert bootstrap[bootstrap.index("--topic") + 1] in env["STREAM_AE_INPUT_TOPICS"].split(",")
    assert name != "prometheus" and "prometheus" in services


def test_compose_gpu_override_reserves_gpus_for_the_cuda_image() -> None:
    override = _compose(DEPLOY / "compose.gpu.yaml")["services"]
    base = _compose()["services"]
    assert set(override) <= set(base)
    for name in ("worker", "trainer"):
        assert override[name]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
        devices = override[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), name
    assert override["worker"]["deploy"]["replicas"] == base["worker"]["deploy"]["replicas"]


def test_k8s_topology() -> None:
    config = _k8s("ConfigMap", "stream-ae-config")["data"]
    deployment = _k8s("Deployment", "stream-ae-worker")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (worker,) = pod["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    # Every pod: config from the ConfigMap and Secret, no Service-link variables.
    secret = _k8s("Secret", "stream-ae-credentials")
    for workload, spec in _pod_specs():
        assert spec.get("enableServiceLinks") is False, (
            f"{workload}: Kubernetes would inject <SERVICE>_PORT variables, and a Service named "
            "stream-ae-* yields STREAM_AE_* ones the worker refuses"
        )
        (container,) = spec["containers"]
        sources = {next(iter(s)): s[next(iter(s))]["name"] for s in container["envFrom"]}
        assert sources == {
            "configMapRef": "stream-ae-config",
            "secretRef": secret["metadata"]["name"],
        }, workload
        registry = {v["name"]: v for v in spec["volumes"]}["registry"]
        claim = registry["persistentVolumeClaim"]["claimName"]
        assert claim == _k8s("PersistentVolumeClaim")["metadata"]["name"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["registry"]["mountPath"] == config["STREAM_AE_MODEL_PATH"]
        writes = workload == "stream-ae-trainer"
        assert bool(mounts["registry"].get("readOnly")) is not writes, workload
    assert "ReadWriteMany" in _k8s("PersistentVolumeClaim")["spec"]["accessModes"]
    # The PDB protects the worker pods.
    pdb = _k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The trainer refits once per run, one run at a time.
    cron = _k8s("CronJob", "stream-ae-trainer")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (trainer,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert trainer["command"] == ["stream-ae-train", "refit", "--once"]


def test_keda_scales_the_worker_group_on_its_own_lag() -> None:
    config = _k8s("ConfigMap", "stream-ae-config")["data"]
    scaled = _k8s("ScaledObject", "stream-ae-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "stream-ae-worker"
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == config["STREAM_AE_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config.get("STREAM_AE_GROUP_ID", _default("group_id"))
    assert meta["topic"] in config["STREAM_AE_INPUT_TOPICS"].split(",")
    reset = config.get("STREAM_AE_AUTO_OFFSET_RESET", _default("auto_offset_reset"))
    assert meta["offsetResetPolicy"] == reset
    assert int(meta["lagThreshold"]) > 0
    assert scaled["spec"]["minReplicaCount"] >= 1


# --------------------------------------------------------------------------------------------
# Images: installed the way the README installs the project
# --------------------------------------------------------------------------------------------


def _joined_lines(path: Path) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current:
            lines.append(current)
        current = ""
    return lines


_PIP_INSTALL = re.compile(r"(?:\bpip3?|\$\(PIP\)|\$\{PIP\}|-m pip)\s+install\s+([^&;|\n`]*)")
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-t", "--target", "-i"}


def _project_installs(text: str) -> list[tuple[bool, frozenset[str]]]:
    """(editable, extras) of every ``pip install`` of a project path in ``text``."""
    found = []
    for match in _PIP_INSTALL.finditer(text):
        tokens = shlex.split(match.group(1).strip(), comments=True)
        editable = False
        skip = False
        for token in tokens:
            if skip:
                skip = False
            elif token in ("-e", "--editable"):
                editable = True
            elif token in _PIP_VALUE_OPTIONS or token == "--index-url":
                skip = True
            elif token.startswith("-"):
                continue
            else:
                target = re.fullmatch(r"(?P<path>[^\[]+)(?:\[(?P<extras>[^\]]*)\])?", token)
                if target and (target["path"] == "." or "/" in target["path"]):
                    extras = frozenset(
                        e.strip() for e in (target["extras"] or "").split(",") if e.strip()
                    )
                    found.append((editable, extras))
                editable = False
    return found


def test_project_install_parser() -> None:
    text = (
        "pip install -e '.[dev]'\n.venv/bin/pip install .\n"
        'RUN pip install --no-deps "/tmp/src[gpu, plots]" && pip install -r req.txt\n'
        "python -m pip install --upgrade pip\n$(PIP) install -e .[dev,plots]"
    )
    assert _project_installs(text) == [
        (True, frozenset({"dev"})),
        (False, frozenset()),
        (False, frozenset({"gpu", "plots"})),
        (True, frozenset({"dev", "plots"})),
    ]


def _readme_installs() -> tuple[frozenset[str] | None, frozenset[str], frozenset[str]]:
    """What README.md installs: (extras of its editable development install, or None; extras
    of its install for running; extras of its install for running on GPUs). Without a README,
    or without such lines, the running installs are ``pip install .`` and ``.[gpu]``."""
    readme = ROOT / "README.md"
    installs = _project_installs(readme.read_text()) if readme.exists() else []
    editable = {extras for is_editable, extras in installs if is_editable}
    running = {extras for is_editable, extras in installs if not is_editable}
    cpu = {extras for extras in running if "gpu" not in extras}
    gpu = {extras for extras in running if "gpu" in extras}
    assert len(editable) <= 1, (
        f"README.md installs the project for development in several ways: {editable}"
    )
    assert len(cpu) <= 1, f"README.md installs the project for running in several ways: {cpu}"
    assert len(gpu) <= 1, f"README.md installs the project for GPUs in several ways: {gpu}"
    run = next(iter(cpu)) if cpu else frozenset()
    return (
        next(iter(editable)) if editable else None,
        run,
        next(iter(gpu)) if gpu else run | {"gpu"},
    )


def test_images_install_the_readme_extras() -> None:
    declared = set(PYPROJECT["project"]["optional-dependencies"])
    dev_extras, run_extras, gpu_extras = _readme_installs()
    if dev_extras is not None:
        assert dev_extras <= declared, f"README.md installs unknown extras {dev_extras - declared}"
    assert "dev" not in run_extras | gpu_extras
    assert run_extras | gpu_extras <= declared
    for dockerfile, want in ((DOCKERFILE_CPU, run_extras), (DOCKERFILE_GPU, gpu_extras)):
        installs = _project_installs("\n".join(_joined_lines(dockerfile)))
        # A dependencies layer and a source layer, both of the project.
        assert len(installs) >= 2, f"{dockerfile.name}: expected two project installs"
        for editable, extras in installs:
            assert not editable, f"{dockerfile.name}: an editable install in an image"
            assert extras == want, (
                f"{dockerfile.name} installs the project with extras {sorted(extras)}, the "
                f"README with {sorted(want)}: they must agree"
            )


def test_setup_scripts_install_like_the_readme() -> None:
    dev_extras, _, _ = _readme_installs()
    if dev_extras is None:
        pytest.skip("README.md has no editable install to compare with")
    sources = [ROOT / "Makefile", *sorted((ROOT / "scripts").glob("*"))]
    checked = 0
    for source in sources:
        if not source.is_file():
            continue
        for editable, extras in _project_installs(source.read_text()):
            if editable:
                checked += 1
                assert extras == dev_extras, (
                    f"{source.relative_to(ROOT)} installs .[{','.join(sorted(extras))}], "
                    f"README.md .[{','.join(sorted(dev_extras))}]"
                )
    assert checked, "no editable install found in the Makefile or scripts/"


def test_images_run_as_a_non_root_user() -> None:
    for dockerfile in (DOCKERFILE_CPU, DOCKERFILE_GPU):
        users = [ln.split()[1] for ln in _joined_lines(dockerfile) if ln.startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), dockerfile.name
        assert re.search(r"--uid 10001\b", dockerfile.read_text()), dockerfile.name
    uid = {spec["securityContext"]["runAsUser"] for _, spec in _pod_specs()}
    assert uid == {10001}


def _ignore_patterns(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


# Packages for developing stream-ae (dev stack, benchmarks, demo), never shipped in the image.
DEV_ONLY_PACKAGES = {"stream_ae_dev"}


def test_build_context_is_an_allow_list_of_the_packages() -> None:
    cpu = _ignore_patterns(DEPLOY / "Dockerfile.dockerignore")
    gpu = _ignore_patterns(DEPLOY / "Dockerfile.gpu.dockerignore")
    assert cpu == gpu, "the two images must see the same build context"
    assert cpu[0] == "*", "the build context must be an allow-list"
    included = {p[1:].strip("/") for p in cpu if p.startswith("!")}
    for secret in NEVER_IN_IMAGE:
        assert secret not in included
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and (p / "__init__.py").exists()
        for pattern in packages
        if re.fullmatch(pattern.replace("*", ".*"), p.name)
    }
    shipped = top_level - DEV_ONLY_PACKAGES
    assert shipped and shipped <= included, f"packages left out: {shipped - included}"
    assert not DEV_ONLY_PACKAGES & included, "the development tools must not reach the image"
    assert {"pyproject.toml", "README.md"} <= included


# --------------------------------------------------------------------------------------------
# Command lines: accepted by the real argument parsers
# --------------------------------------------------------------------------------------------


def _deploy_commands() -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    for path in COMPOSE_FILES:
        for name, service in _compose(path)["services"].items():
            if _is_stream_ae_service(service) and "command" in service:
                commands.append((f"{path.name}:{name}", [str(a) for a in service["command"]]))
    for where, container in _containers():
        commands.append((where, list(container["command"])))
    for dockerfile in (DOCKERFILE_CPU, DOCKERFILE_GPU):
        (cmd,) = [ln for ln in _joined_lines(dockerfile) if ln.startswith("CMD ")]
        commands.append((f"{dockerfile.name}:CMD", yaml.safe_load(cmd[4:])))
    return commands


class _Parsed(Exception):
    """Raised instead of running a command once its arguments have parsed."""


def _parse_only(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run the console script ``argv[0]`` up to the end of argument parsing, not further."""
    scripts = PYPROJECT["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]} is not a console script of pyproject.toml"
    module_name, func_name = scripts[argv[0]].split(":")
    try:
        main: Callable[[list[str]], Any] = getattr(importlib.import_module(module_name), func_name)
    except ImportError as exc:
        raise AssertionError(f"{argv[0]} ({scripts[argv[0]]}) cannot be imported: {exc}") from exc
    original = argparse.ArgumentParser.parse_known_args
    depth = 0

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        # Sub-parsers call parse_known_args too: stop only when the outermost call returns.
        nonlocal depth
        depth += 1
        try:
            namespace, extras = original(self, *args, **kwargs)
        finally:
            depth -= 1
        if depth == 0:
            if extras:
                self.error(f"unrecognized arguments: {' '.join(extras)}")
            raise _Parsed(namespace)
        return namespace, extras

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    try:
        main(argv[1:])
    except _Parsed as parsed:
        namespace: argparse.Namespace = parsed.args[0]
        return namespace
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{argv[0]} ran without parsing its arguments with argparse")


def test_deploy_commands_are_collected() -> None:
    commands = {tuple(cmd) for _, cmd in _deploy_commands()}
    assert ("stream-ae", "worker") in commands
    assert ("stream-ae-train", "refit", "--once") in commands
    assert any(cmd[:4] == ("stream-ae-train", "refit", "--every", "6h") for cmd in commands)
    assert any(cmd[:2] == ("stream-ae-train", "train") for cmd in commands)


def test_parse_only_rejects_an_unknown_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = _parse_only(["stream-ae", "alerts", "--json"], monkeypatch)
    assert namespace.command == "alerts" and namespace.json is True
    with pytest.raises(SystemExit):
        _parse_only(["stream-ae", "alerts", "--no-such-option"], monkeypatch)
    assert "--no-such-option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse_only(["stream-ae-train", "refit"], monkeypatch)  # --every or --once required
    assert "--every" in capsys.readouterr().err


@pytest.mark.parametrize("where,argv", _deploy_commands(), ids=[w for w, _ in _deploy_commands()])
def test_deploy_command_is_accepted_by_its_cli(
    where: str,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        _parse_only(argv, monkeypatch)
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is refused: {capsys.readouterr().err}")


# --------------------------------------------------------------------------------------------
# Alert rules and the operations guide
# --------------------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    groups = _load_all(RULES)[0]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _base_metric(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_alert_rules_are_well_formed() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            _duration_s(rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    exprs = " ".join(r["expr"] for r in rules)
    # The alerts the operations guide promises.
    for metric in (
        "stream_ae_consumer_lag",
        "stream_ae_dlq_total",
        "stream_ae_model_swaps_total",
        "stream_ae_events_total",
    ):
        assert metric in exprs, f"no alert on {metric}"


def test_alert_rules_use_documented_metrics_and_are_explained() -> None:
    guide = OPERATIONS.read_text()
    documented = set(_METRIC_NAME.findall(guide))
    for rule in _rules():
        for metric in _METRIC_NAME.findall(rule["expr"]):
            assert _base_metric(metric) in documented, (
                f"{rule['alert']} uses {metric}, not described in docs/operations.md"
            )
        assert rule["alert"] in guide, f"docs/operations.md does not explain {rule['alert']}"


def test_alert_rules_use_metrics_the_worker_exports() -> None:
    source = _package_source()
    for rule in _rules():
        for metric in _METRIC_NAME.findall(rule["expr"]):
            # prometheus_client adds _total to counters: the source may name either form.
            stem = re.sub(r"_total$", "", _base_metric(metric))
            assert stem in source, (
                f"{rule['alert']} uses {metric}, but no module of stream_ae defines {stem}"
            )


_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_STRING_LITERAL = re.compile(r"""["']([A-Za-z0-9_.:/-]+)["']""")


def _documented_values(metric: str) -> set[str]:
    """The backticked words of the metric's row in the guide's metrics table."""
    rows = [
        line
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith(f"| `{_base_metric(metric)}{{") or line.startswith(f"| `{metric}`")
    ]
    assert rows, f"docs/operations.md has no table row for {metric}"
    return set(re.findall(r"`([a-z_]+)`", rows[0]))


def test_alert_rules_select_label_values_the_worker_sets() -> None:
    # A selector on a label value the worker never sets (result="refused" when the code says
    # "refused_invalid") matches nothing, so its alert can never fire. The values must be the
    # ones the guide documents for the metric, and those must appear in the code.
    literals = set(_STRING_LITERAL.findall(_package_source()))
    checked = 0
    for rule in _rules():
        for metric, selector in re.findall(r"(stream_ae_\w+)\{([^}]*)\}", rule["expr"]):
            for label, op, value in _MATCHER.findall(selector):
                if op not in ("=", "=~"):
                    continue
                checked += 1
                matches = {v for v in _documented_values(metric) if re.fullmatch(value, v)}
                assert matches, (
                    f'{rule["alert"]}: {metric}{{{label}{op}"{value}"}} matches none of the '
                    "values docs/operations.md documents for it"
                )
                assert matches <= literals, f"{rule['alert']}: {matches - literals} not in code"
    assert checked >= 3


def test_operations_guide_covers_the_issue() -> None:
    guide = OPERATIONS.read_text().lower()
    for topic in (
        "sizing",
        "partitions",
        "memory usage",
        "rollback",
        "redis_key_prefix",
        "reset-offsets",
        "consumer lag",
        "dead-letter",
        "secret",
        "keda",
        "horizontalpodautoscaler",
    ):
        assert topic in guide, f"docs/operations.md does not cover {topic!r}"
