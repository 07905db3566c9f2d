"""The Celery app: queues, routing and the delivery guarantees (docs/architecture.md)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.config import Settings, get_settings

# `finish` holds the short last stage of a render (encoding). On a queue of its own it is not
# starved by new long work: a worker consuming `render,finish` alternates between the queues
# (kombu rotates the one that just delivered to the back), so an encode waits for at most one
# new render, not for every render queued before it finished.
QUEUES = ("ingest", "preprocess", "train", "render", "finish", "webhooks")

# Task name -> queue; the names are stable because messages outlive deployments.
TASK_ROUTES = {
    "talkinghead.ingest": "ingest",
    "talkinghead.preprocess": "preprocess",
    "talkinghead.prepare": "preprocess",
    "talkinghead.train_segment": "train",
    "talkinghead.export": "train",
    "talkinghead.render": "render",
    "talkinghead.encode": "finish",
    "talkinghead.webhook": "webhooks",
    "talkinghead.corpus_scan": "preprocess",
    "talkinghead.corpus_build": "preprocess",
    "talkinghead.corpus_clip": "preprocess",
    "talkinghead.corpus_index": "preprocess",
    "talkinghead.model_segment": "train",
    "talkinghead.model_publish": "train",
}

TASK_MODULES = [
    "services.ingest.tasks",
    "services.preprocess.tasks",
    "services.trainer.tasks",
    "services.renderer.tasks",
    "services.webhooks.tasks",
    "services.corpus.tasks",
    "services.models.tasks",
]


celery_app = Celery("talkinghead", include=TASK_MODULES)

# Worker options for every way the project starts one. Gossip, mingle and the event
# heartbeat are cluster chatter the platform does not use (jobs carry their own leases and
# heartbeats in the database); their bootsteps are also what crashed a worker when Redis went
# away ("Unrecoverable error: AttributeError ... 'hostname'") instead of reconnecting.
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def configure_celery(settings: Settings, app: Celery = celery_app) -> Celery:
    """Point `app` at the broker of `settings` and apply the delivery rules."""
    app.conf.update(
        broker_url=settings.redis_url or "memory://",
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="ingest",
        task_routes={name: {"queue": queue} for name, queue in TASK_ROUTES.items()},
        # A task is acknowledged only once it finished, and a worker that dies mid-task
        # gives it back: together with idempotent tasks this makes delivery at-least-once.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_acks_on_failure_or_timeout=True,
        # Redelivery of an unacked message after a lost worker; segments stay far shorter.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # Reconnect for as long as the broker is away: Celery's default gives up (and the
        # worker exits) after 100 tries.
        broker_connection_max_retries=None,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    # Celery caches the connection and producer pools of the first broker it used; drop
    # them so a reconfigured app publishes to the new URL (kombu keeps pools per connection).
    app._pool = None
    app.amqp._producer_pool = None
    return app


configure_celery(get_settings())
