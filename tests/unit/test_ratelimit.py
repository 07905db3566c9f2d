"""The token bucket's arithmetic, run by its Lua script in a real Redis on a given clock."""

from __future__ import annotations

import uuid

import pytest
import redis

from services.api.ratelimit import Draw, TokenBucket
from shared.config import Settings
from shared.limits import TenantLimits, resolve_limits


@pytest.fixture
def bucket(redis_url: str) -> TokenBucket:
    """The script on the session's Redis."""
    return TokenBucket(redis.Redis.from_url(redis_url))


@pytest.fixture
def key() -> str:
    """A bucket of this test alone."""
    return f"test:bucket:{uuid.uuid4().hex}"


def test_a_full_bucket_allows_its_burst_then_refills_at_the_rate(
    bucket: TokenBucket, key: str
) -> None:
    draws = [bucket.take(key, rate=1.0, burst=3, now=100.0) for _ in range(4)]
    assert [(d.allowed, d.tokens) for d in draws] == [
        (True, 2.0),
        (True, 1.0),
        (True, 0.0),
        (False, 0.0),
    ]
    assert draws[-1].wait_s == pytest.approx(1.0)
    half = bucket.take(key, rate=1.0, burst=3, now=100.5)
    assert (half.allowed, half.tokens, half.wait_s) == (False, 0.5, 0.5)
    assert half.retry_after == 1  # rounded up to whole seconds, never to 0
    again = bucket.take(key, rate=1.0, burst=3, now=101.0)
    assert (again.allowed, again.tokens) == (True, 0.0)
    # an idle hour refills it to the burst, not beyond
    later = [bucket.take(key, rate=1.0, burst=3, now=3700.0) for _ in range(4)]
    assert [d.allowed for d in later] == [True, True, True, False]


def test_retry_after_is_the_wait_for_one_token_rounded_up(bucket: TokenBucket, key: str) -> None:
    assert bucket.take(key, rate=0.2, burst=1, now=10.0).allowed
    refused = bucket.take(key, rate=0.2, burst=1, now=10.0)
    assert not refused.allowed and refused.wait_s == pytest.approx(5.0)
    assert refused.retry_after == 5
    assert bucket.take(key, rate=0.2, burst=1, now=12.5).retry_after == 3  # 2.5 s -> 3
    assert bucket.take(key, rate=0.2, burst=1, now=15.0).allowed


def test_a_clock_going_back_refills_nothing(bucket: TokenBucket, key: str) -> None:
    assert bucket.take(key, rate=10.0, burst=1, now=50.0).allowed
    assert not bucket.take(key, rate=10.0, burst=1, now=40.0).allowed


def test_a_lower_burst_applies_at_once(bucket: TokenBucket, key: str) -> None:
    assert bucket.take(key, rate=1.0, burst=10, now=0.0).tokens == 9.0
    assert bucket.take(key, rate=1.0, burst=2, now=0.0).tokens == 1.0


def test_without_a_given_clock_redis_time_is_used_and_the_key_expires(
    bucket: TokenBucket, key: str, redis_url: str
) -> None:
    assert bucket.take(key, rate=2.0, burst=4).allowed
    ttl_ms = redis.Redis.from_url(redis_url).pttl(key)
    assert 0 < ttl_ms <= 4 / 2.0 * 1000 + 1000  # gone once the bucket would be full again


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.0, 1), (0.0001, 1), (1.0, 1), (1.0001, 2), (4.2, 5)]
)
def test_retry_after_is_a_whole_number_of_seconds_at_least_one(wait_s: float, header: int) -> None:
    assert Draw(False, 0.0, wait_s).retry_after == header


def test_stored_overrides_replace_only_their_keys_and_bad_ones_are_ignored() -> None:
    settings = Settings(_env_file=None, tenant_requests_per_second=5, tenant_burst=7)
    base = resolve_limits(settings, None)
    assert base == TenantLimits(
        max_running_jobs=settings.tenant_max_running_jobs,
        max_queued_jobs=settings.tenant_max_queued_jobs,
        requests_per_second=5,
        burst=7,
    )
    assert resolve_limits(settings, {"burst": 50}) == base.model_copy(update={"burst": 50})
    # a negative value or an unknown key (written by hand) leaves the defaults in force
    assert resolve_limits(settings, {"burst": -1}) == base
    assert resolve_limits(settings, {"bursts": 50}) == base
