"""docker-compose.yml: valid Compose, health-checked, pinned, wired to real settings and queues."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.queue import QUEUES
from tests.deploy.promql import PROMETHEUS_CONFIG, ROOT
from tests.deploy.tools import run, setting_variables, tool

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


def compose_config(env_file: Path) -> tuple[int, str, str]:
    """`docker-compose config` with only `env_file` for interpolation (nothing inherited)."""
    binary = tool("docker-compose", "Debian package docker-compose")
    result = run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        env={"PATH": os.environ.get("PATH", "")},
        cwd=ROOT,
    )
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it with .env.example."""
    code, out, err = compose_config(ENV_EXAMPLE)
    assert code == 0, err
    resolved: dict[str, Any] = yaml.safe_load(out)
    return resolved


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(config["services"])


def one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait for to *complete*: they run once and exit."""
    return {
        name
        for service in services.values()
        for name, dep in (service.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Volume mounts in long form (docker-compose 1.x prints the short `src:dst[:ro]`)."""
    out = []
    for mount in service.get("volumes") or []:
        if isinstance(mount, str):
            source, target, *mode = mount.split(":")
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            mount = {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
        out.append(mount)
    return out


def queues_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    if "worker" not in command:
        return []
    return str(command[command.index("--queues") + 1]).split(",")


def test_compose_file_follows_the_compose_specification() -> None:
    binary = tool("check-jsonschema", "pip install check-jsonschema")
    result = run([binary, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_it_with_the_example_environment() -> None:
    binary = tool("docker-compose", "Debian package docker-compose")
    result = run(
        [binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        env={"PATH": os.environ.get("PATH", "")},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_passwords_have_no_defaults(tmp_path: Path) -> None:
    """Without a .env the stack refuses to start instead of running with known passwords."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    code, _, err = compose_config(empty)
    assert code != 0
    assert re.search(r"POSTGRES_PASSWORD|MINIO_ROOT_PASSWORD|GRAFANA_ADMIN_PASSWORD", err), err


def test_the_example_environment_sets_every_required_variable() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert required and required <= example
    # Settings also read a .env in the working directory: no TH_ variable may live there.
    assert not [name for name in example if name.startswith("TH_")]


def test_every_long_running_service_has_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    once = one_shots(services)
    assert {"migrate", "minio-init"} <= once
    for name, service in services.items():
        if name in once:
            assert service.get("restart") == "no", f"{name} runs once and must not restart"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image!r} is not pinned"
        if "build" in service:
            assert repository.startswith("talkinghead/"), f"{name} builds {image!r}"


def test_service_images_start_from_the_image_migrate_builds(
    services: dict[str, dict[str, Any]],
) -> None:
    """`make up` builds `migrate` (the shared base) first; every service image is FROM it."""
    base = services["migrate"]["image"]
    assert services["migrate"]["build"]["dockerfile"].endswith("base.Dockerfile")
    for name, service in services.items():
        build = service.get("build")
        if build and name not in ("migrate", "triton"):
            assert build["args"]["BASE_IMAGE"] == base, name
            dockerfile = ROOT / build["dockerfile"]
            assert "FROM ${BASE_IMAGE}" in dockerfile.read_text(), dockerfile


def test_th_variables_are_real_settings(services: dict[str, dict[str, Any]]) -> None:
    known = setting_variables()
    used = {var for s in services.values() for var in (s.get("environment") or {})}
    th = {var for var in used if var.startswith("TH_")}
    assert th, "no TH_ settings at all?"
    assert th <= known, f"not in Settings: {sorted(th - known)}"


def test_talkinghead_services_wait_for_migrations_and_the_bucket(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if not service.get("image", "").startswith("talkinghead/") or name in ("migrate",):
            continue
        deps = service.get("depends_on") or {}
        assert deps.get("minio-init", {}).get("condition") == "service_completed_successfully"
        if name != "triton":  # Triton touches no database
            assert deps.get("migrate", {}).get("condition") == "service_completed_successfully"


def test_state_lives_in_named_volumes(config: dict[str, Any]) -> None:
    services, volumes = config["services"], set(config.get("volumes") or {})
    mounted: dict[str, set[str]] = {}
    for name, service in services.items():
        for mount in mounts(service):
            if mount["type"] == "volume":
                mounted.setdefault(name, set()).add(mount["target"])
                assert mount["source"] in volumes
            else:  # configuration from the repository, never written
                assert mount["type"] == "bind" and mount.get("read_only"), (name, mount)
    assert mounted == {
        "postgres": {"/var/lib/postgresql/data"},
        "redis": {"/data"},
        "minio": {"/data"},
        "prometheus": {"/prometheus"},
        "grafana": {"/var/lib/grafana"},
    }
    assert "--appendonly" in services["redis"]["command"]  # queued tasks survive restarts


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices", []) if "gpu" in d.get("capabilities", [])]


def test_triton_and_the_trainer_get_a_gpu(services: dict[str, dict[str, Any]]) -> None:
    for name in ("triton", "trainer", "dcgm-exporter"):
        devices = gpu_devices(services[name])
        assert devices and devices[0]["driver"] == "nvidia", name
    assert services["trainer"]["build"]["dockerfile"].endswith("trainer-cuda.Dockerfile")
    gpu_users = {name for name, s in services.items() if gpu_devices(s)}
    assert gpu_users == {"triton", "trainer", "dcgm-exporter"}  # render workers are CPU


def test_triton_serves_the_repository_in_explicit_mode(
    services: dict[str, dict[str, Any]],
) -> None:
    triton = services["triton"]
    command = triton["command"]
    assert "--model-control-mode=explicit" in command
    models = [arg.split("=", 1)[1] for arg in command if arg.startswith("--load-model=")]
    assert models == ["*"]  # every model of the generated repository (one per family)
    assert "--metrics-port=8002" in command
    shm = str(triton["shm_size"])
    size = int(re.sub(r"\D", "", shm)) * {"g": 1 << 30, "m": 1 << 20}.get(shm[-2:-1].lower(), 1)
    assert size >= 1 << 30, f"shm_size {shm} is too small for batches of frames"
    renderer = services["renderer"]["environment"]
    assert renderer["TH_RENDER_BACKEND"] == "triton"
    host, port = renderer["TH_TRITON_URL"].split(":")
    assert host == "triton" and f"--grpc-port={port}" in command
    assert renderer["TH_TRITON_PROTOCOL"] == "grpc"


def test_workers_consume_every_queue_and_expose_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    workers = {name: queues_of(s) for name, s in services.items() if queues_of(s)}
    consumed = [q for queues in workers.values() for q in queues]
    assert sorted(consumed) == sorted(QUEUES), workers  # each queue has exactly one pool
    assert workers["trainer"] == ["train"]
    trainer = services["trainer"]["command"]
    assert trainer[trainer.index("--concurrency") + 1] == "1"  # one training per GPU
    for name in workers:
        assert services[name]["environment"]["TH_WORKER_METRICS_PORT"] == "9100", name

    scrape = {
        j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    }
    worker_names = {n for sd in scrape["talkinghead-worker"]["dns_sd_configs"] for n in sd["names"]}
    assert worker_names == set(workers)
    assert all(sd["port"] == 9100 for sd in scrape["talkinghead-worker"]["dns_sd_configs"])
    assert scrape["triton"]["dns_sd_configs"][0] == {"names": ["triton"], "type": "A", "port": 8002}
    api_port = int(services["api"]["environment"]["TH_API_PORT"])
    assert scrape["talkinghead-api"]["dns_sd_configs"][0]["port"] == api_port


def test_the_queue_exporter_reads_every_celery_queue(
    services: dict[str, dict[str, Any]],
) -> None:
    exporter = services["redis-exporter"]["environment"]
    keys = [
        item.split("=", 1)[1] for item in exporter["REDIS_EXPORTER_CHECK_SINGLE_KEYS"].split(",")
    ]
    assert sorted(keys) == sorted(QUEUES)
    broker = services["api"]["environment"]["TH_REDIS_URL"]
    assert broker.endswith("/0") and all(
        k.startswith("db0=") for k in exporter["REDIS_EXPORTER_CHECK_SINGLE_KEYS"].split(",")
    )
    scrape = {
        j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    }
    assert scrape["redis"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]


def test_grafana_provisions_the_dashboards(services: dict[str, dict[str, Any]]) -> None:
    binds = {
        m["target"]: Path(m["source"]) for m in mounts(services["grafana"]) if m["type"] == "bind"
    }
    provisioning = binds["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "talkinghead.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert list(binds[path].glob("*.json")), f"no dashboards mounted at {path}"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (binds[path] / Path(home).name).is_file()
