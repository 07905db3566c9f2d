#!/usr/bin/env python3
"""Container health checks of the talkinghead images (Docker HEALTHCHECK, compose, k8s exec).

    talkinghead-healthcheck api          GET /healthz of the API on TH_API_PORT
    talkinghead-healthcheck worker       GET /metrics of a Celery worker on TH_WORKER_METRICS_PORT
                                         (served once the worker is ready to take tasks)
    talkinghead-healthcheck deps         the database answers SELECT 1 and the broker PING
                                         (the reconciler, which serves nothing)
    talkinghead-healthcheck url URL      any URL answers 2xx (e.g. Triton's /v2/health/ready)

Exit status 0 when healthy, 1 otherwise, with the reason on stderr. Standard library only
for the HTTP checks, so the same file serves the Triton image.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 4.0


def check_url(url: str) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{url} answered {response.status}")


def check_port(variable: str, default: str, path: str) -> None:
    port = os.environ.get(variable, default)
    if not port or port == "0":
        raise RuntimeError(f"{variable} is not set: nothing to check")
    check_url(f"http://127.0.0.1:{port}{path}")


def check_dependencies() -> None:
    from sqlalchemy import text

    from services.api.monitoring import redis_client
    from shared.config import load_settings
    from shared.db.session import make_engine

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    client = redis_client(settings.redis_url)
    if client is None:
        raise RuntimeError("TH_REDIS_URL is not a Redis URL")
    client.ping()


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else ""
    try:
        if mode == "api":
            check_port("TH_API_PORT", "8000", "/healthz")
        elif mode == "worker":
            check_port("TH_WORKER_METRICS_PORT", "", "/metrics")
        elif mode == "deps":
            check_dependencies()
        elif mode == "url" and len(argv) == 3:
            check_url(argv[2])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as exc:
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
