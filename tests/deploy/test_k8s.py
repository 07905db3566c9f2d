"""deploy/k8s: both overlays render, and what they render is wired to the real system."""

from __future__ import annotations

import base64
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from sqlalchemy import text

from shared.db.migrate import upgrade
from shared.db.models import Job
from shared.db.session import make_engine, session_scope
from shared.jobs import PIPELINES, STAGE_TASKS
from shared.queue import QUEUES, TASK_ROUTES
from shared.tenants import create_tenant
from tests.deploy.promql import ROOT, alert_rules, dashboard_queries, rule_groups
from tests.deploy.tools import run, setting_variables, tool

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    binary = tool("kubectl", "kubectl, for `kubectl kustomize`")
    result = run([binary, "kustomize", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """Pod templates of every workload, by workload name."""
    kinds = ("Deployment", "StatefulSet", "Job")
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in kinds
    }


def talkinghead_deployments(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {n: d for n, d in of_kind(docs, "Deployment").items() if n.startswith("talkinghead-")}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def worker_queues(deployment: dict[str, Any]) -> list[str]:
    args = container(deployment).get("args", [])
    return str(args[args.index("--queues") + 1]).split(",") if "worker" in args else []


def config_data(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (config,) = [
        c for n, c in of_kind(docs, "ConfigMap").items() if n.startswith("talkinghead-config")
    ]
    return dict(config["data"])


def secret_data(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    secrets = [s for n, s in of_kind(docs, "Secret").items() if n.startswith("talkinghead-secrets")]
    if not secrets:
        return {}
    return {k: base64.b64decode(v).decode() for k, v in secrets[0].get("data", {}).items()}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_system(overlay: str) -> None:
    docs = rendered(overlay)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces
    deployments = set(talkinghead_deployments(docs))
    assert deployments == {
        f"talkinghead-{c}"
        for c in ("api", "reconciler", "ingest", "preprocess", "renderer", "trainer", "triton")
    }
    (job,) = [j for n, j in of_kind(docs, "Job").items() if n.startswith("talkinghead-")]
    migrate = job["spec"]["template"]["spec"]["containers"][0]
    assert migrate["args"] == ["talkinghead", "migrate"]
    # Every envFrom reference resolves to the rendered ConfigMap, or to the Secret the
    # overlay generates (dev) or expects to exist (prod, named in its kustomization).
    configmaps, secrets = set(of_kind(docs, "ConfigMap")), set(of_kind(docs, "Secret"))
    for name, pod in pod_specs(docs).items():
        for c in pod["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps, name
                else:
                    wanted = ref["secretRef"]["name"]
                    assert wanted in secrets or (
                        overlay == "prod" and wanted == "talkinghead-secrets"
                    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_th_variables_are_real_settings(overlay: str) -> None:
    docs = rendered(overlay)
    names = set(config_data(docs)) | set(secret_data(docs))
    for pod in pod_specs(docs).values():
        for c in pod["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    th = {n for n in names if n.startswith("TH_")}
    assert "TH_DATABASE_URL" in th or overlay == "prod"
    assert th <= setting_variables(), f"not in Settings: {sorted(th - setting_variables())}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_resources_bounded(overlay: str) -> None:
    for name, pod in pod_specs(rendered(overlay)).items():
        for c in pod["containers"]:
            repository, _, tag = c["image"].rpartition(":")
            assert repository and "/" not in tag and tag != "latest", (name, c["image"])
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (name, bound)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_go_to_the_trainer_and_triton_pools_only(overlay: str) -> None:
    deployments = talkinghead_deployments(rendered(overlay))
    for name, deployment in deployments.items():
        resources = container(deployment)["resources"]
        gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
        if name in ("talkinghead-trainer", "talkinghead-triton"):
            assert gpus == 1 and int(resources["requests"]["nvidia.com/gpu"]) == 1, name
            pod = deployment["spec"]["template"]["spec"]
            assert pod["nodeSelector"], name
            tolerated = {t["key"] for t in pod["tolerations"] if t.get("effect") == "NoSchedule"}
            assert "nvidia.com/gpu" in tolerated, name
        else:
            assert gpus == 0, f"{name} is a CPU pool"
    assert (
        container(deployments["talkinghead-trainer"])["image"]
        .rpartition(":")[0]
        .endswith("trainer-cuda")
    )
    nodes = {
        n: deployments[n]["spec"]["template"]["spec"]["nodeSelector"]
        for n in ("talkinghead-trainer", "talkinghead-triton")
    }
    assert nodes["talkinghead-trainer"] != nodes["talkinghead-triton"], "separate GPU pools"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_and_shared_memory(overlay: str) -> None:
    triton = talkinghead_deployments(rendered(overlay))["talkinghead-triton"]
    c = container(triton)
    args = c["args"]
    assert args[0] == "tritonserver" and "--model-control-mode=explicit" in args
    models = [a.split("=", 1)[1] for a in args if a.startswith("--load-model=")]
    assert models == ["*"]  # every model of the generated repository (one per family)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--http-port={ports['http']}" in args and f"--metrics-port={ports['metrics']}" in args
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    (shm,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    # Render workers reach it over gRPC at its Service.
    config = config_data(rendered(overlay))
    host, port = config["TH_TRITON_URL"].split(":")
    service = of_kind(rendered(overlay), "Service")[host]
    assert {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"} == {int(port)}
    assert config["TH_TRITON_PROTOCOL"] == "grpc" and config["TH_RENDER_BACKEND"] == "triton"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_probes(overlay: str) -> None:
    for name, deployment in talkinghead_deployments(rendered(overlay)).items():
        c = container(deployment)
        assert "livenessProbe" in c, name
        if "worker" in c.get("args", []):  # the metrics port opens once the worker is ready
            port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
            assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
            assert str(port) == config_data(rendered(overlay))["TH_WORKER_METRICS_PORT"]
    api = container(talkinghead_deployments(rendered(overlay))["talkinghead-api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_pool_on_its_real_queue_keys(overlay: str) -> None:
    docs = rendered(overlay)
    deployments = talkinghead_deployments(docs)
    config, secret = config_data(docs), secret_data(docs)
    scaled = of_kind(docs, "ScaledObject")
    consumed: list[str] = []
    for name, deployment in deployments.items():
        queues = worker_queues(deployment)
        if not queues:
            continue
        consumed += queues
        (obj,) = [o for o in scaled.values() if o["spec"]["scaleTargetRef"]["name"] == name]
        redis = [t["metadata"] for t in obj["spec"]["triggers"] if t["type"] == "redis"]
        assert sorted(t["listName"] for t in redis) == sorted(queues), name
        env = {e["name"] for e in container(deployment).get("env", [])}
        for trigger in redis:
            # KEDA reads these from the target's container environment.
            assert trigger["addressFromEnv"] in config
            assert trigger.get("passwordFromEnv", "REDIS_PASSWORD") in env | set(config)
            if secret:  # the Redis database Celery uses holds the lists
                db = urlparse(secret["TH_REDIS_URL"]).path.strip("/") or "0"
                assert trigger["databaseIndex"] == db
                host = urlparse(secret["TH_REDIS_URL"]).netloc.rsplit("@", 1)[-1]
                assert config[trigger["addressFromEnv"]] == host
        assert obj["spec"]["maxReplicaCount"] >= max(1, obj["spec"].get("minReplicaCount", 0))
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"
    assert sorted(consumed) == sorted(QUEUES), "every queue is consumed by exactly one pool"


def _training_stages() -> set[str]:
    """The job states whose task runs on the `train` queue."""
    return {stage for stage, task in STAGE_TASKS.items() if TASK_ROUTES[task] == "train"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_scale_in_never_kills_a_running_training(overlay: str, tmp_path: Path) -> None:
    docs = rendered(overlay)
    trainer = talkinghead_deployments(docs)["talkinghead-trainer"]
    (obj,) = [
        o
        for o in of_kind(docs, "ScaledObject").values()
        if o["spec"]["scaleTargetRef"]["name"] == "talkinghead-trainer"
    ]
    c = container(trainer)
    args = c["args"]
    assert worker_queues(trainer) == ["train"] and args[args.index("--concurrency") + 1] == "1"

    # 1. Sized on queued + running work: a database trigger counting exactly the avatars and
    #    shared models whose job is in a trainer stage, checked by running its query on the
    #    real schema.
    (pg,) = [t["metadata"] for t in obj["spec"]["triggers"] if t["type"] == "postgresql"]
    assert pg["connectionFromEnv"] == "TH_DATABASE_URL" and float(pg["targetQueryValue"]) == 1
    assert "TH_DATABASE_URL" in secret_data(docs) or overlay == "prod"
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(db)
    states = {
        "avatar": [*PIPELINES["avatar"], "queued", "ready", "failed"],
        "render": PIPELINES["render"],
        "model": [*PIPELINES["model"], "queued", "ready"],
        "corpus": [*PIPELINES["corpus"], "ready"],
    }
    with session_scope(db) as s:
        tenant, _ = create_tenant(s, "keda")
        for kind, statuses in states.items():
            for i, status in enumerate(statuses):
                s.add(Job(tenant_id=tenant.id, kind=kind, resource_id=f"{kind}{i}", status=status))
    with make_engine(db).connect() as connection:
        counted = connection.execute(text(pg["query"])).scalar_one()
    assert _training_stages() == {"training", "exporting", "fitting", "publishing"}
    assert counted == len(_training_stages())

    # 2. Scale-in removes one pod at a time, slowly, and only after the work dropped.
    behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert behavior["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in behavior["policies"])
    assert obj["spec"]["cooldownPeriod"] >= 300

    # 3. The removed pod finishes its segment: the grace period outlasts any segment, which
    #    is shorter than the visibility timeout by design (and SIGTERM is Celery's warm
    #    shutdown: the image's entrypoint is tini, which forwards it).
    grace = trainer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(config_data(docs)["TH_VISIBILITY_TIMEOUT_S"])
    assert "command" not in c, "keep the image's tini entrypoint"
    pdb = [
        p
        for p in of_kind(docs, "PodDisruptionBudget").values()
        if selects(
            p["spec"]["selector"]["matchLabels"], trainer["spec"]["template"]["metadata"]["labels"]
        )
    ]
    assert len(pdb) == 1 and pdb[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_disruption_budgets_cover_the_pools(overlay: str) -> None:
    docs = rendered(overlay)
    pdbs = list(of_kind(docs, "PodDisruptionBudget").values())
    for name, deployment in talkinghead_deployments(docs).items():
        if name == "talkinghead-reconciler":  # a singleton; a second one would be harmless
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], labels)], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_under_the_jobs_rules_and_dashboards_use(overlay: str) -> None:
    docs = rendered(overlay)
    services = of_kind(docs, "Service")
    jobs: set[str] = set()
    for monitor in of_kind(docs, "ServiceMonitor").values():
        selected = [
            s
            for s in services.values()
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        assert selected, monitor["metadata"]["name"]
        for service in selected:
            jobs.add(service["metadata"]["labels"][monitor["spec"]["jobLabel"]])
            ports = {p["name"] for p in service["spec"]["ports"]}
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    used = {
        job
        for q in [*(r["expr"] for r in alert_rules()), *(q.expr for q in dashboard_queries())]
        for job in re.findall(r'job="([^"]+)"', q)
    }
    assert used and used <= jobs, used - jobs
    # Every worker pool is scraped.
    deployments = talkinghead_deployments(docs)
    workers = {n for n, d in deployments.items() if worker_queues(d)}
    scraped = {
        n
        for n, d in deployments.items()
        for s in services.values()
        if s["metadata"].get("labels", {}).get("talkinghead.io/scrape-job") == "talkinghead-worker"
        and selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    }
    assert scraped == workers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_carries_the_rules_file(overlay: str) -> None:
    (rule,) = of_kind(rendered(overlay), "PrometheusRule").values()
    assert rule["spec"]["groups"] == rule_groups()


def test_dev_datastores_match_the_secret() -> None:
    docs = rendered("dev")
    secret, config = secret_data(docs), config_data(docs)
    services = of_kind(docs, "Service")
    for url in (secret["TH_DATABASE_URL"], secret["TH_REDIS_URL"], config["TH_S3_ENDPOINT_URL"]):
        parsed = urlparse(url)
        assert parsed.hostname in services, url
        assert parsed.port in {p["port"] for p in services[parsed.hostname]["spec"]["ports"]}, url
    assert config["REDIS_ADDRESS"] == urlparse(secret["TH_REDIS_URL"]).netloc
    postgres = yaml.safe_dump(of_kind(docs, "StatefulSet")["postgres"])
    assert urlparse(secret["TH_DATABASE_URL"]).password == secret["POSTGRES_PASSWORD"]
    assert "POSTGRES_PASSWORD" in postgres
