"""Per-tenant request rates: a token bucket in Redis, so every API replica draws on the same one."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.api.errors import ApiError
from services.api.monitoring import redis_client
from shared.limits import TenantLimits
from shared.telemetry import RATE_LIMITER_ERRORS, REFUSED_REQUESTS

log = logging.getLogger(__name__)

KEY_PREFIX = "th:ratelimit:"
# A check waits this long at most for Redis; after a failure, requests pass unchecked for
# FAIL_OPEN_S instead of each waiting for a Redis that is away.
REDIS_TIMEOUT_S = 0.25
FAIL_OPEN_S = 5.0
KNOWN_MAX = 10_000  # keys and tenants remembered for refusing without Redis

# Take `cost` tokens from the bucket at KEYS[1] if it holds them, refilling it at `rate`
# tokens a second up to `burst`. Redis's clock (`TIME`) is the one clock every replica
# shares; ARGV[4], when not empty, stands in for it (tests). The key expires once the bucket
# would be full again, which is the same as a fresh one. Numbers come back as strings:
# Redis would truncate Lua numbers to integers.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {tostring(allowed), tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Draw:
    """The outcome of taking from a bucket."""

    allowed: bool
    tokens: float  # left in the bucket
    wait_s: float  # until the tokens asked for are there (0 when allowed)

    @property
    def retry_after(self) -> int:
        """Whole seconds for a `Retry-After` header: at least 1, never early."""
        return max(1, math.ceil(self.wait_s))


class TokenBucket:
    """The token-bucket script, bound to a Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def take(
        self, key: str, rate: float, burst: int, cost: float = 1.0, now: float | None = None
    ) -> Draw:
        """Take `cost` tokens if the bucket holds them; `now` (seconds) replaces Redis's clock."""
        args = [repr(float(rate)), str(burst), repr(float(cost)), "" if now is None else repr(now)]
        allowed, tokens, wait = self._script(keys=[key], args=args)
        return Draw(allowed == b"1", float(tokens), float(wait))


class RateLimiter:
    """Refuses a tenant's requests beyond its rate; fails open while Redis cannot answer.

    Once Redis refuses a tenant, this process refuses that tenant's further requests by
    itself for a short window, before the API key is looked up, so a flood of refused
    requests costs neither database nor Redis work. (A key revoked meanwhile gets that 429
    rather than its 401 until the window ends.)

    Requests that fail authentication are counted per client address instead (no tenant is
    known): past that rate the address gets 429 for them. Valid keys sent from the same
    address (a NAT, a proxy) are never refused for it.
    """

    def __init__(self, client: redis.Redis, fail_open_s: float = FAIL_OPEN_S) -> None:
        self._client = client
        self.bucket = TokenBucket(client)
        self.fail_open_s = fail_open_s
        self._unchecked_until = 0.0  # monotonic time until which Redis is not asked
        self._tenant_of_key: dict[str, str] = {}  # digest -> tenant, of keys refused before
        self._failed_keys: set[str] = set()  # digests of keys that failed authentication
        self._empty: dict[str, _Empty] = {}  # bucket -> its known-empty window

    @classmethod
    def from_url(cls, url: str) -> RateLimiter | None:
        """A limiter on the Redis at `url` (no retries: a slow answer is worse than none)."""
        client = redis_client(url, REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        return None if client is None else cls(client)

    def close(self) -> None:
        """Close the Redis connections."""
        self._client.close()

    def tenant_of(self, digest: str) -> str | None:
        """The tenant of an API key (by digest) refused before, if this process remembers it."""
        return self._tenant_of_key.get(digest)

    def check_empty(self, tenant_id: str) -> None:
        """429 at once while this process knows the tenant's bucket to be empty."""
        self._check_window(tenant_id)

    def check_address(self, address: str, digest: str | None) -> None:
        """429 at once for a request without a key, or with one that failed before, while
        this process knows the address to be over its failed-authentication rate."""
        if digest is None or digest in self._failed_keys:
            self._check_window(ADDRESS_BUCKET + address)

    def check(self, tenant_id: str, limits: TenantLimits, digest: str) -> None:
        """Count one request of the tenant; 429 `rate_limited` with `Retry-After` when over."""
        rate = limits.requests_per_second
        if not rate:
            return
        draw = self._take(tenant_id, rate, limits.burst)
        if draw is None or draw.allowed:
            return
        self._remember()
        self._tenant_of_key[digest] = tenant_id
        self._refuse_for(tenant_id, draw, _Empty(0.0, rate, limits.burst, TENANT))

    def count_failure(self, address: str, digest: str | None, rate: float, burst: int) -> None:
        """Count one request of `address` that failed authentication; 429 when over `rate`."""
        self._remember()
        if digest is not None:
            self._failed_keys.add(digest)
        if not rate:
            return
        bucket = ADDRESS_BUCKET + address
        draw = self._take(bucket, rate, burst)
        if draw is None or draw.allowed:
            return
        self._refuse_for(bucket, draw, _Empty(0.0, rate, burst, ADDRESS))

    def _take(self, bucket: str, rate: float, burst: int) -> Draw | None:
        """One token from `bucket`; None while Redis cannot be asked (requests pass)."""
        if time.monotonic() < self._unchecked_until:
            return None
        try:
            return self.bucket.take(KEY_PREFIX + bucket, rate, burst)
        except (redis.RedisError, OSError):
            # An outage of the limiter must not become an outage of the API.
            RATE_LIMITER_ERRORS.inc()
            self._unchecked_until = time.monotonic() + self.fail_open_s
            log.warning(
                "rate limiter cannot reach Redis; requests pass unchecked for %g s",
                self.fail_open_s,
                exc_info=True,
            )
            return None

    def _remember(self) -> None:
        """Bound what this process remembers; forgetting costs one Redis call or lookup."""
        for known in (self._tenant_of_key, self._empty, self._failed_keys):
            if len(known) >= KNOWN_MAX:
                known.clear()

    def _refuse_for(self, bucket: str, draw: Draw, limit: _Empty) -> NoReturn:
        """Remember `bucket` as empty, then refuse the request."""
        # Refuse here for the Retry-After just given (a client honouring it waits that long
        # anyway), but never past the time the bucket takes to fill: tokens due meanwhile
        # accumulate in Redis and are not lost.
        window = max(draw.wait_s, min(draw.retry_after, limit.burst / limit.rate))
        self._empty[bucket] = _Empty(
            time.monotonic() + window, limit.rate, limit.burst, limit.scope
        )
        _refuse(limit, draw.retry_after)

    def _check_window(self, bucket: str) -> None:
        empty = self._empty.get(bucket)
        if empty is None:
            return
        left = empty.until - time.monotonic()
        if left <= 0:
            self._empty.pop(bucket, None)
            return
        _refuse(empty, max(1, math.ceil(left)))


@dataclass(frozen=True)
class _Scope:
    """Whose requests a bucket counts, as a refusal names it and the metric counts it."""

    name: str  # in the refusal's detail
    reason: str  # the `reason` label of th_api_refused_requests_total
    what: str  # which requests are counted


TENANT = _Scope("this tenant", "rate_limit", "requests")
ADDRESS = _Scope("this client address", "auth_failures", "requests without a valid API key")
ADDRESS_BUCKET = "address:"  # tenant ids start `tn_`: no bucket name is shared


@dataclass(frozen=True)
class _Empty:
    """A window in which a bucket cannot hold a token, and the limit it enforces."""

    until: float  # monotonic
    rate: float
    burst: int
    scope: _Scope


def _refuse(limit: _Empty, retry_after: int) -> NoReturn:
    REFUSED_REQUESTS.labels(limit.scope.reason).inc()
    raise ApiError(
        429,
        "rate_limited",
        f"more than {limit.rate:g} {limit.scope.what} a second (bursts of {limit.burst}) for "
        f"{limit.scope.name}; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )
