"""Deliver one webhook: sign, POST, record the attempt, schedule a retry with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import and_, or_, update

from shared.config import Settings
from shared.db.models import Tenant, WebhookDelivery, utcnow
from shared.db.session import session_scope
from shared.netguard import ForbiddenTarget, check_callback_url
from shared.telemetry import WEBHOOK_DELIVERIES

log = logging.getLogger(__name__)
SENDING_STALE_S = 120


def sign(secret: str, body: bytes) -> str:
    """The `X-Signature` header value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Canonical JSON bytes of a payload (what is signed is what is sent)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _claim(settings: Settings, delivery_id: str) -> bool:
    now = utcnow()
    with session_scope(settings.database_url) as s:
        res = s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                or_(
                    and_(
                        WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now
                    ),
                    and_(
                        WebhookDelivery.status == "sending",
                        WebhookDelivery.claimed_at < now - timedelta(seconds=SENDING_STALE_S),
                    ),
                ),
            )
            .values(status="sending", claimed_at=now)
        )
        return res.rowcount == 1  # type: ignore[attr-defined]


def deliver(settings: Settings, delivery_id: str) -> str:
    """Attempt delivery once if it is due; returns the outcome."""
    if not _claim(settings, delivery_id):
        return "skipped"
    with session_scope(settings.database_url) as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        tenant = s.get(Tenant, delivery.tenant_id)
        secret = tenant.webhook_secret if tenant else ""
        url, payload, attempt = delivery.url, delivery.payload, delivery.attempts + 1
    body = encode_payload(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "talkinghead-webhooks/1",
        "X-Signature": sign(secret, body),
        "X-Webhook-Id": delivery_id,
        "X-Webhook-Event": str(payload.get("event", "")),
        "X-Webhook-Attempt": str(attempt),
    }
    code: int | None = None
    error: str | None = None
    permanent = False
    try:
        # Checked again at send time: DNS may have changed since the request was accepted.
        check_callback_url(url, settings.allow_private_callbacks)
        resp = httpx.post(url, content=body, headers=headers, timeout=settings.webhook_timeout_s)
        code = resp.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except ForbiddenTarget as exc:
        error, permanent = str(exc), True
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    now = utcnow()
    with session_scope(settings.database_url) as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        delivery.attempts = attempt
        delivery.last_status_code = code
        delivery.last_error = error
        history = list(delivery.log.get("attempts", []))
        history.append({"at": now.isoformat(), "status_code": code, "error": error})
        delivery.log = {"attempts": history}
        if error is None:
            delivery.status, delivery.delivered_at, outcome = "delivered", now, "delivered"
        elif permanent or attempt >= settings.webhook_max_attempts:
            delivery.status, outcome = "failed", "failed"
        else:
            delay = settings.webhook_backoff_s * 2 ** (attempt - 1)
            delivery.status, delivery.next_attempt_at, outcome = (
                "pending",
                now + timedelta(seconds=delay),
                "retry",
            )
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    log.info("webhook %s", outcome, extra={"fields": {"delivery_id": delivery_id, "code": code}})
    return outcome
