"""A real Prometheus scrapes the running platform; every dashboard panel and alert evaluates.

Debian's `prometheus` scrapes the embedded stack's API and Celery worker and the
`nvidia-pytriton` wheel's `tritonserver` (with the `radnerf` model loaded), under the job
names of deploy/prometheus/prometheus.yml and with the alert rules of deploy/prometheus/rules
loaded, while avatar and render jobs run (the cheap `still` renderer, avatars refused on
their input, a webhook, a few Triton inferences). Then every PromQL expression of every
dashboard panel and alert rule goes through Prometheus's HTTP API: each must parse, every
panel except those about GPU hardware must return data, and every rule must evaluate
without error.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from services.tritonserver import TritonServer, TritonUnavailable
from shared.db.session import session_scope
from shared.tenants import create_tenant
from tests.conftest import make_audio, make_face_video, make_video
from tests.deploy.promql import (
    PROMETHEUS_CONFIG,
    RULES,
    Query,
    dashboard_queries,
    rule_queries,
    substitute,
)
from tests.fixtures.servers import free_port, missing, wait_for
from tests.fixtures.webhooks import WebhookReceiver, running_receiver

pytestmark = pytest.mark.timeout(300)

SCRAPE_S = 1


@contextlib.contextmanager
def prometheus_server(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Debian's prometheus with `config` on a free port; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus (Debian package `prometheus`)")
    assert binary is not None
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 30, "prometheus")
        except TimeoutError:
            raise AssertionError(log_path.read_text(errors="replace")[-3000:]) from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape_config(api: str, worker: str, triton: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its talkinghead and Triton jobs pointed at the
    processes of this test: the same job names and rule files, faster intervals."""
    config = copy.deepcopy(yaml.safe_load(PROMETHEUS_CONFIG.read_text()))
    config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
    config["rule_files"] = [str(RULES / "*.yml")]
    targets = {
        "talkinghead-api": {"targets": [api]},
        "talkinghead-worker": {"targets": [worker], "labels": {"pool": "embedded"}},
        "triton": {"targets": [triton]},
    }
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            jobs.append({"job_name": job["job_name"], "static_configs": [targets[job["job_name"]]]})
    assert {j["job_name"] for j in jobs} == set(targets), "a job name changed in prometheus.yml"
    config["scrape_configs"] = jobs
    return config


def query(prometheus: str, expr: str) -> dict[str, Any]:
    """An instant query; the JSON answer (status `success` or `error`)."""
    answer: dict[str, Any] = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10
    ).json()
    return answer


def infer_unknown_avatars(triton: TritonServer, count: int) -> None:
    """Requests for avatars without an export: Triton runs them (the model answers each with
    an error), which moves its nv_inference_* counters without needing a trained avatar."""
    import tritonclient.http as http

    client = http.InferenceServerClient(triton.http_url)
    for i in range(count):
        inputs = [
            http.InferInput("AVATAR_ID", [1, 1], "BYTES"),
            http.InferInput("POSE", [1, 4, 4], "FP32"),
            http.InferInput("AUDIO", [1, 1, 1, 1], "FP32"),
            http.InferInput("EYE", [1, 1], "FP32"),
        ]
        inputs[0].set_data_from_numpy(np.array([[f"av_missing_{i}".encode()]], dtype=object))
        inputs[1].set_data_from_numpy(np.eye(4, dtype=np.float32)[None])
        inputs[2].set_data_from_numpy(np.zeros((1, 1, 1, 1), np.float32))
        inputs[3].set_data_from_numpy(np.ones((1, 1), np.float32))
        with contextlib.suppress(Exception):
            client.infer("radnerf", inputs)
    client.close()


def test_every_panel_and_alert_evaluates_against_the_running_platform(
    redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    objects = tmp_path / "state" / "objects"
    objects.mkdir(parents=True)
    worker_port = free_port()
    env = {
        "TH_WORKER_METRICS_PORT": str(worker_port),
        "TH_ALLOW_PRIVATE_CALLBACKS": "true",
        "TH_RECONCILE_INTERVAL_S": "1",
        "TH_LOG_JSON": "false",
        # Every stage lasts at least a second, so scrapes see jobs in flight.
        "TH_TASK_DELAY_S": "1",
    }
    triton_env = {"TH_STORAGE_DIR": str(objects), "TH_TORCH_THREADS": "1"}
    with contextlib.ExitStack() as running:
        triton = TritonServer(env=triton_env)
        running.callback(triton.stop)
        try:
            triton.start()
        except TritonUnavailable as exc:
            missing(f"tritonserver from the nvidia-pytriton wheel ({exc})")
        stack = running.enter_context(
            EmbeddedStack(tmp_path / "state", redis_url=redis_url, env=env)
        )
        receiver = running.enter_context(running_receiver())
        problems = exercise_and_evaluate(stack, triton, receiver, worker_port, tmp_path)
    elapsed = time.monotonic() - started
    print(f"prometheus scrape test: {elapsed:.0f} s")
    assert not problems, "\n".join(problems)


def exercise_and_evaluate(
    stack: EmbeddedStack,
    triton: TritonServer,
    receiver: WebhookReceiver,
    worker_port: int,
    tmp_path: Path,
) -> list[str]:
    """Run jobs under a scraping Prometheus; the problems found evaluating every query."""
    api = stack.base_url.removeprefix("http://")
    triton_metrics = f"127.0.0.1:{triton.metrics_port}"
    config = scrape_config(api, f"127.0.0.1:{worker_port}", triton_metrics)
    with prometheus_server(config, tmp_path) as prometheus:
        with session_scope(stack.settings.database_url) as s:
            _, key = create_tenant(s, "prometheus-scrape")
        client = TalkingHeadClient(stack.base_url, key)
        media = tmp_path / "media"
        media.mkdir()

        # Traffic: an avatar that becomes ready (with a webhook), avatars refused on their
        # input (2 s of video, under the 4 s minimum), a 404, renders. Each kind of event
        # happens twice, scrapes apart: a counter series is born at its first event, and
        # only a later one gives it a rate.
        good = client.create_avatar(
            make_face_video(media / "face.mp4"),
            consent=True,
            callback_url=receiver.url,
            renderer="meanframe",
        )
        short = make_video(media / "short.mp4")
        refused = client.wait("avatar", client.create_avatar(short, consent=True)["id"], timeout=60)
        assert refused["status"] == "failed", refused
        missing_avatar = httpx.get(f"{stack.base_url}/v1/avatars/av_nope", headers=auth(key))
        assert missing_avatar.status_code == 404
        avatar = client.wait("avatar", good["id"], timeout=90)
        assert avatar["status"] == "ready", (avatar, stack.logs_dir)
        refused = client.wait("avatar", client.create_avatar(short, consent=True)["id"], timeout=60)
        assert refused["status"] == "failed", refused
        infer_unknown_avatars(triton, 6)

        speech = make_audio(media / "speech.wav", 2.0)
        for _ in range(2):
            render = client.create_render(avatar["id"], speech)
            done = client.wait("render", render["id"], timeout=60)
            assert done["status"] == "done", (done, stack.logs_dir)
            time.sleep(2 * SCRAPE_S)
            infer_unknown_avatars(triton, 2)
        assert receiver.wait_for(1, timeout=30), "no webhook delivered"
        time.sleep(2 * SCRAPE_S)  # the last events reach a scrape

        # The scrapes saw the render in flight, through the API's job gauges.
        seen = query(prometheus, 'max(max_over_time(th_jobs{kind="render",state="rendering"}[5m]))')
        assert seen["status"] == "success", seen
        assert [float(r["value"][1]) for r in seen["data"]["result"]] == [1.0], seen
        targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        assert health == {"talkinghead-api": "up", "talkinghead-worker": "up", "triton": "up"}

        problems = evaluate_all(prometheus, dashboard_queries() + rule_queries())
        return problems + rule_evaluation_errors(prometheus)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def evaluate_all(prometheus: str, queries: list[Query]) -> list[str]:
    """Why each query failed: a parse or evaluation error, or no data for a non-GPU panel."""
    problems = []
    for q in queries:
        try:
            expr = substitute(q.expr)
        except KeyError as exc:
            problems.append(f"{q}: {exc}")
            continue
        answer = query(prometheus, expr)
        if answer.get("status") != "success":
            problems.append(f"{q}: {answer.get('errorType')}: {answer.get('error')}")
        elif q.source != "rules" and not q.gpu and not answer["data"]["result"]:
            problems.append(f"{q}: no data for {q.expr}")
        elif q.source != "rules" and not q.gpu:
            values = [r["value"][1] for r in answer["data"]["result"]]
            if all(v == "NaN" for v in values):  # series exist, but nothing to divide yet
                print(f"note: {q} is NaN (no events of its kind in this run)")
    return problems


def rule_evaluation_errors(prometheus: str) -> list[str]:
    """Rules Prometheus failed to evaluate (e.g. many-to-many matches on real series)."""
    groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if len(rules) != len(rule_queries()):
        return [f"Prometheus loaded {len(rules)} rules, deploy/ has {len(rule_queries())}"]
    return [
        f"rules / {rule['name']}: {rule['health']} {rule.get('lastError', '')}"
        for rule in rules
        if rule["health"] != "ok"
    ]
