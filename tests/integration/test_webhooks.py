"""Webhook delivery: HMAC signature, retries with backoff, every attempt recorded, SSRF guard."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.webhooks.sender import deliver, sign
from shared.config import Settings
from shared.db.migrate import upgrade
from shared.db.models import WebhookDelivery
from shared.db.session import session_scope
from shared.netguard import ForbiddenTarget, check_callback_url
from shared.tenants import create_tenant
from tests.fixtures.webhooks import running_receiver


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    settings = Settings(data_dir=tmp_path, webhook_backoff_s=0.2, webhook_max_attempts=3, **kw)  # type: ignore[arg-type]
    upgrade(settings.database_url)
    return settings


def add_delivery(settings: Settings, url: str) -> tuple[str, str]:
    with session_scope(settings.database_url) as s:
        tenant, _ = create_tenant(s, f"t{time.monotonic_ns()}")
        d = WebhookDelivery(
            tenant_id=tenant.id,
            resource_id="av_1",
            event="avatar.ready",
            url=url,
            payload={"event": "avatar.ready", "metadata": {"order": 7}},
        )
        s.add(d)
        s.flush()
        return d.id, tenant.webhook_secret


def row(settings: Settings, delivery_id: str) -> WebhookDelivery:
    with session_scope(settings.database_url) as s:
        d = s.get(WebhookDelivery, delivery_id)
        assert d is not None
        s.expunge(d)
        return d


def test_signed_delivery_is_recorded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allow_private_callbacks=True)
    with running_receiver() as hook:
        delivery_id, secret = add_delivery(settings, hook.url)  # type: ignore[attr-defined]
        assert deliver(settings, delivery_id) == "delivered"
        assert deliver(settings, delivery_id) == "skipped"  # a duplicate message sends nothing
        (call,) = hook.calls
    assert call.headers["X-Signature"] == sign(secret, call.body)
    assert call.headers["X-Webhook-Id"] == delivery_id
    assert call.json()["metadata"] == {"order": 7}
    d = row(settings, delivery_id)
    assert (d.status, d.attempts, d.last_status_code) == ("delivered", 1, 200)
    assert len(d.log["attempts"]) == 1


def test_failures_retry_with_backoff_then_give_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allow_private_callbacks=True)
    with running_receiver() as hook:
        hook.status = 500
        delivery_id, _ = add_delivery(settings, hook.url)  # type: ignore[attr-defined]
        assert deliver(settings, delivery_id) == "retry"
        first = row(settings, delivery_id)
        assert deliver(settings, delivery_id) == "skipped"  # not due yet: backoff holds
        time.sleep(0.25)
        assert deliver(settings, delivery_id) == "retry"
        second = row(settings, delivery_id)
        gap1 = (first.next_attempt_at - first.created_at).total_seconds()
        gap2 = (second.next_attempt_at - first.next_attempt_at).total_seconds()
        assert gap2 > gap1  # exponential: 0.2 s, then 0.4 s
        time.sleep(0.45)
        assert deliver(settings, delivery_id) == "failed"
        assert len(hook.calls) == 3
    d = row(settings, delivery_id)
    assert (d.status, d.attempts, d.last_status_code) == ("failed", 3, 500)
    assert [a["status_code"] for a in d.log["attempts"]] == [500, 500, 500]


def test_private_targets_are_refused_at_send_time(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with running_receiver() as hook:
        delivery_id, _ = add_delivery(settings, hook.url)  # type: ignore[attr-defined]
        assert deliver(settings, delivery_id) == "failed"
        assert hook.calls == []
    assert "non-public" in (row(settings, delivery_id).last_error or "")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "ftp://example.com/",
        "http://user:pw@8.8.8.8/",
        "not a url",
    ],
)
def test_callback_guard_refuses(url: str) -> None:
    with pytest.raises(ForbiddenTarget):
        check_callback_url(url)


def test_callback_guard_allows_public_and_operator_override() -> None:
    check_callback_url("https://8.8.8.8/hook")
    check_callback_url("http://127.0.0.1:9/x", allow_private=True)
