"""Celery task for webhook deliveries (retries are scheduled in the DB, not as ETA tasks)."""

from __future__ import annotations

from services.webhooks.sender import deliver
from shared.config import get_settings
from shared.queue import celery_app


@celery_app.task(name="talkinghead.webhook")
def webhook(delivery_id: str) -> str:
    """Attempt one delivery if it is due."""
    return deliver(get_settings(), delivery_id)
