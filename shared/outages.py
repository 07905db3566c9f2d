"""Which errors mean a backing service is briefly away, and retrying through such outages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF_S = 5.0
DATABASE, BROKER, STORAGE = "database", "broker", "storage"


def _error_types() -> dict[str, tuple[type[Exception], ...]]:
    """The exception classes of each service's client that mean "not reachable right now"."""
    import botocore.exceptions as boto
    import kombu.exceptions
    import redis.exceptions
    import sqlalchemy.exc

    return {
        DATABASE: (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError),
        BROKER: (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            kombu.exceptions.OperationalError,
        ),
        # HTTPClientError covers EndpointConnectionError, ConnectionClosedError and timeouts.
        STORAGE: (boto.HTTPClientError, boto.ConnectionError),
    }


def outage_errors() -> tuple[type[Exception], ...]:
    """Every exception class that means a service is unreachable (for handlers)."""
    return (*(c for cs in _error_types().values() for c in cs), ServiceUnavailable)


def outage_of(exc: BaseException) -> str | None:
    """`database`, `broker` or `storage` when `exc` (or what caused it) says so, else None.

    Wrappers (boto3's S3UploadFailedError, Celery's errors) chain the client's error, so the
    causes are followed a few levels deep.
    """
    types = _error_types()
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        for service, classes in types.items():
            if isinstance(seen, classes):
                return service
        if _is_server_error(seen):  # a store still starting answers 500/503
            return STORAGE
        if isinstance(seen, ServiceUnavailable):
            return seen.service
        seen = seen.__cause__ or seen.__context__
    return None


def _is_server_error(exc: BaseException) -> bool:
    """Whether `exc` is an S3 5xx answer (the store is up but cannot serve yet)."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return isinstance(status, int) and status >= 500


class ServiceUnavailable(Exception):
    """A service stayed unreachable for longer than the retry budget allowed."""

    def __init__(self, service: str, waited_s: float, last: BaseException) -> None:
        super().__init__(f"the {service} was unreachable for {waited_s:.0f}s: {last}")
        self.service = service
        self.code = f"{service}_unavailable"


def retry_through_outage(
    call: Callable[[], T],
    budget_s: float,
    backoff_s: float = 0.5,
    only: frozenset[str] | None = None,
    what: str = "call",
    classify: Callable[[BaseException], str | None] = outage_of,
) -> T:
    """Run `call`, retrying with doubling backoff while a service is away, for `budget_s`.

    Only outages (as `classify` names them; of the services in `only`, default all) are
    retried; any other error propagates at once. Past the budget, ServiceUnavailable names
    the service.
    """
    started = time.monotonic()
    wait = backoff_s
    while True:
        try:
            return call()
        except Exception as exc:
            service = classify(exc)
            if service is None or (only is not None and service not in only):
                raise
            waited = time.monotonic() - started
            if waited >= budget_s:  # the whole budget was tried, not one backoff less
                raise ServiceUnavailable(service, waited, exc) from exc
            pause = min(wait, budget_s - waited)  # the last try lands at the budget's end
            log.warning("%s: the %s is unreachable, retrying in %.1fs", what, service, pause)
            time.sleep(pause)
            wait = min(wait * 2, MAX_BACKOFF_S)
