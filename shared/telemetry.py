"""Prometheus metrics and structured JSON logging with request and job ids."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# One set of metric objects per process; in multi-process mode (embedded stack, prefork
# workers) values land in PROMETHEUS_MULTIPROC_DIR and any process can serve all of them.
HTTP_REQUESTS = Counter(
    "th_http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "th_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOB_TRANSITIONS = Counter(
    "th_job_transitions_total", "Job state changes by kind and new state", ["kind", "state"]
)
JOB_FAILURES = Counter(
    "th_job_failures_total", "Failed jobs by kind and error code", ["kind", "code"]
)
TASK_DURATION = Histogram(
    "th_task_duration_seconds",
    "Celery task run time by task and outcome",
    ["task", "outcome"],
    buckets=(0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900),
)
STAGE_DURATION = Histogram(
    "th_stage_duration_seconds",
    "Wall time a job spent in each stage",
    ["kind", "stage"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
)
WEBHOOK_DELIVERIES = Counter(
    "th_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"]
)
RECONCILER_ACTIONS = Counter(
    "th_reconciler_actions_total", "Jobs the reconciler re-enqueued, by reason", ["reason"]
)
REFUSED_REQUESTS = Counter(
    "th_api_refused_requests_total",
    "API requests refused by a tenant limit, by reason (rate_limit, queued_jobs)",
    ["reason"],
)
RATE_LIMITER_ERRORS = Counter(
    "th_rate_limiter_errors_total",
    "Rate-limit checks that could not reach Redis (the request was let through)",
)
JOB_DEFERRALS = Counter(
    "th_job_deferrals_total",
    "Job starts put back in the queue because the tenant had its running jobs' limit",
    ["kind"],
)
RENDER_FRAMES = Counter("th_render_frames_total", "Frames rendered by render workers (any backend)")
RENDER_FIRST_FRAME = Histogram(
    "th_render_first_frame_seconds",
    "Time from a render's creation to its first rendered frame",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300),
)
TRAIN_STEPS = Counter("th_train_steps_total", "Training steps run by trainer workers")
# Scrape-time gauges are filled by the API's collectors; `livesum` keeps one value per series.
JOBS_BY_STATE = Gauge(
    "th_jobs", "Jobs by kind and state", ["kind", "state"], multiprocess_mode="livemax"
)
QUEUE_DEPTH = Gauge(
    "th_queue_depth", "Messages waiting per Celery queue", ["queue"], multiprocess_mode="livemax"
)
OLDEST_QUEUED_AGE = Gauge(
    "th_oldest_queued_job_age_seconds",
    "Age of the oldest queued job by kind",
    ["kind"],
    multiprocess_mode="livemax",
)


def multiprocess_enabled() -> bool:
    """True when metrics are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render_metrics() -> bytes:
    """The exposition text of every metric this process (or its process group) holds."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker child's live gauges."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)


request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request and job ids in scope."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in (("request_id", request_id_var), ("job_id", job_id_var)):
            value = getattr(record, name, None) or var.get()
            if value:
                out[name] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """Route all logging to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Timer:
    """Context manager measuring elapsed seconds."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start


def iter_metric_names() -> Iterator[str]:
    """Names of the metrics defined here (for docs and dashboards)."""
    for metric in (
        HTTP_REQUESTS,
        HTTP_LATENCY,
        JOB_TRANSITIONS,
        JOB_FAILURES,
        TASK_DURATION,
        STAGE_DURATION,
        WEBHOOK_DELIVERIES,
        RECONCILER_ACTIONS,
        REFUSED_REQUESTS,
        RATE_LIMITER_ERRORS,
        JOB_DEFERRALS,
        JOBS_BY_STATE,
        QUEUE_DEPTH,
        OLDEST_QUEUED_AGE,
    ):
        yield metric._name


def serve_metrics(port: int) -> None:
    """Serve this process's metrics (or the multiprocess directory's) on `port`; 0 does nothing."""
    if not port:
        return
    from prometheus_client import REGISTRY, start_http_server

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, registry=registry)
    else:
        start_http_server(port, registry=REGISTRY)
