"""Celery worker entry point: `celery -A services.worker:app worker -Q ...`."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

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


_pool_size = [1]  # the worker's pool size, known in the main process before the pool forks


@worker_init.connect
def _note_pool_size(sender: Any = None, **_: Any) -> None:
    """Remember how many jobs this worker runs at once, for the children's thread budget."""
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        _pool_size[0] = concurrency


@worker_process_init.connect
def _limit_threads(**_: Any) -> None:
    """Give each pool child its share of the cores, for torch and for ffmpeg's encoder.

    TH_TORCH_THREADS overrides; by default the cores are split over the pool so that N jobs at
    once take no longer than the same N one after another.
    """
    import torch

    from talkinghead.devices import thread_budget
    from talkinghead.media import FFMPEG_THREADS_ENV

    threads = settings.torch_threads or thread_budget(_pool_size[0])
    torch.set_num_threads(threads)
    os.environ.setdefault(FFMPEG_THREADS_ENV, str(threads))


@worker_process_shutdown.connect
def _drop_child_metrics(pid: int | None = None, **_: Any) -> None:
    """Forget a prefork child's live gauges when it exits."""
    mark_process_dead(pid or os.getpid())
