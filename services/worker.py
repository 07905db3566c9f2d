"""Celery worker entry point: `celery -A services.worker:app worker -Q ...`."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from shared.config import get_settings
from shared.queue import celery_app, configure_celery
from shared.telemetry import configure_logging, mark_process_dead, serve_metrics

settings = get_settings()
configure_logging(settings.log_level, settings.log_json)
app = configure_celery(settings, celery_app)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """Expose this worker's metrics when TH_WORKER_METRICS_PORT is set (k8s scrape target)."""
    serve_metrics(settings.worker_metrics_port)


@worker_process_init.connect
def _limit_threads(**_: Any) -> None:
    """Cap each pool child's torch threads (TH_TORCH_THREADS) so workers share the cores."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


@worker_process_shutdown.connect
def _drop_child_metrics(pid: int | None = None, **_: Any) -> None:
    """Forget a prefork child's live gauges when it exits."""
    mark_process_dead(pid or os.getpid())
