"""Celery worker entry point: `celery -A services.worker:app worker -Q ...`."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_shutdown, worker_ready

from shared.config import get_settings
from shared.queue import celery_app, configure_celery
from shared.telemetry import configure_logging, mark_process_dead

settings = get_settings()
configure_logging(settings.log_level, settings.log_json)
app = configure_celery(settings, celery_app)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """Expose this worker's metrics when TH_WORKER_METRICS_PORT is set (k8s scrape target)."""
    port = settings.worker_metrics_port
    if port:
        from prometheus_client import start_http_server
        from prometheus_client.core import REGISTRY

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            start_http_server(port, registry=registry)
        else:
            start_http_server(port, registry=REGISTRY)


@worker_process_shutdown.connect
def _drop_child_metrics(pid: int | None = None, **_: Any) -> None:
    """Forget a prefork child's live gauges when it exits."""
    mark_process_dead(pid or os.getpid())
