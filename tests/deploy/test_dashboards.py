"""deploy/grafana: well-formed dashboards over metrics that exist.

That every expression parses and returns data against the running platform is checked by
tests/integration/test_prometheus_scrape.py; this checks what can be known statically.
"""

from __future__ import annotations

import re

import pytest

from shared import telemetry
from tests.deploy.promql import (
    ROOT,
    Query,
    dashboard_queries,
    dashboards,
    iter_panels,
    metric_names,
    rule_queries,
    substitute,
)

TRITON_MODEL = ROOT / "services" / "renderer" / "triton_model.py"
# Exporters outside this code base: Triton's server metrics, DCGM, redis_exporter, Prometheus.
EXTERNAL = re.compile(r"nv_(inference|gpu|cpu|energy|pinned)_\w+|DCGM_FI_\w+|redis_key_size|up")
GPU = re.compile(r"nv_gpu_\w+|DCGM_FI_\w+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def our_metrics() -> set[str]:
    """Series names talkinghead exposes: shared/telemetry.py and the Triton models."""
    names = set()
    for value in vars(telemetry).values():
        describe = getattr(value, "describe", None)
        if callable(describe) and hasattr(value, "_name"):
            for family in describe():
                kind, base = family.type, family.name
                if kind == "counter":
                    names.add(f"{base}_total")
                elif kind == "histogram":
                    names |= {base + suffix for suffix in HISTOGRAM_SUFFIXES}
                else:
                    names.add(base)
    names |= set(re.findall(r'name="(talkinghead_\w+)"', TRITON_MODEL.read_text()))
    return names


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for name, dashboard in dashboards().items():
        assert dashboard["uid"] not in uids, name
        uids.add(dashboard["uid"])
        assert name == f"{dashboard['uid']}.json" and "talkinghead" in dashboard["tags"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus", name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in iter_panels(dashboard):
            assert panel["title"] and panel["targets"], f"{name}: {panel.get('title')}"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']}"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']} overflows"


def test_panels_use_only_known_variables() -> None:
    for query in dashboard_queries():
        substitute(query.expr)  # KeyError for a variable nobody defines


@pytest.mark.parametrize("query", dashboard_queries() + rule_queries(), ids=str)
def test_expressions_select_metrics_that_exist(query: Query) -> None:
    ours = our_metrics()
    names = metric_names(substitute(query.expr))
    assert names, f"{query}: selects nothing"
    unknown = {n for n in names if n not in ours and not EXTERNAL.fullmatch(n)}
    assert not unknown, f"{query}: no such metric {sorted(unknown)}"


def test_only_gpu_panels_are_exempt_from_returning_data() -> None:
    """The scrape test lets panels of GPU dashboards return nothing; those hold GPU metrics
    only, and GPU metrics appear nowhere else."""
    for query in dashboard_queries():
        gpu = {n for n in metric_names(substitute(query.expr)) if GPU.fullmatch(n)}
        if query.gpu:
            assert gpu and gpu == metric_names(substitute(query.expr)), str(query)
        else:
            assert not gpu, str(query)
    assert any(q.gpu for q in dashboard_queries()), "a GPU dashboard exists"


def test_dashboards_cover_the_issue_topics() -> None:
    """API, jobs and queues, training, rendering with Triton, and GPUs."""
    exprs = {uid: " ".join(q.expr for q in dashboard_queries() if q.source == uid) for uid in
             {q.source for q in dashboard_queries()}}  # fmt: skip
    assert "th_http_request_duration_seconds_bucket" in exprs["talkinghead-api"]
    assert "th_queue_depth" in exprs["talkinghead-jobs"]
    assert "th_train_steps_total" in exprs["talkinghead-training"]
    assert "nv_inference_queue_duration_us" in exprs["talkinghead-render"]
    assert "th_render_frames_total" in exprs["talkinghead-render"]
    assert "nv_gpu_utilization" in exprs["talkinghead-gpu"]
