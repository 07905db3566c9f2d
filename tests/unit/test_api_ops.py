"""Health, readiness, metrics and job dispatch against real or unreachable brokers."""

from __future__ import annotations

from typing import Any

import redis

from shared.db.models import Job
from shared.db.session import session_scope
from tests.fixtures.servers import redis_server
from tests.unit.conftest import Api, ApiFactory, Media
from tests.unit.test_api_avatars import post_avatar


def test_health_endpoints_need_no_key(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "store": "ok"}


def test_readyz_reports_an_unreachable_broker(make_api: object) -> None:
    api = make_api(redis_url="redis://127.0.0.1:1/0")  # type: ignore[operator]
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"].startswith("error") and body["checks"]["database"] == "ok"


def test_metrics_use_route_templates_and_job_gauges(api: Api) -> None:
    api.client.get("/v1/avatars/av_missing", headers=api.headers)
    text = api.client.get("/metrics").text
    assert 'route="/v1/avatars/{avatar_id}"' in text
    assert "av_missing" not in text
    assert 'th_jobs{kind="render",state="done"} 0.0' in text
    assert 'th_oldest_queued_job_age_seconds{kind="avatar"}' in text


def test_readyz_and_queue_depth_with_a_real_redis(make_api: ApiFactory) -> None:
    with redis_server() as url:
        api = make_api(redis_url=url)
        ready = api.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"
        # Celery's Redis transport keeps each queue as a list named like the queue
        redis.Redis.from_url(url).lpush("train", "m1", "m2")
        text = api.client.get("/metrics").text
        assert 'th_queue_depth{queue="train"} 2.0' in text
        assert 'th_queue_depth{queue="ingest"} 0.0' in text


def test_broker_down_still_accepts_the_avatar(api: Api, media: Media, monkeypatch: Any) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(api.client.app.state.jobs.celery, "send_task", refuse)  # type: ignore[attr-defined]
    response = post_avatar(api, media)
    assert response.status_code == 202
    with session_scope(api.settings.database_url) as s:
        job = s.query(Job).filter_by(resource_id=response.json()["id"]).one()
        # committed but never enqueued: the reconciler picks it up
        assert job.status == "queued" and job.enqueued_at is None
