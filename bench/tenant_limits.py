"""Tenant isolation under a flood: a calm tenant's latency while another tenant floods the API.

The API runs in this process (uvicorn in a thread, on a free loopback port) against its own
PostgreSQL database and Redis; each tenant's load comes from a child process of its own, so
no client competes with the server for this process's GIL. Load is open loop (requests leave
on a fixed schedule; latency counts from the scheduled time, so a stalled server cannot hide
its queueing). Phases, in one run, `--duration` seconds each:

  baseline         the calm tenant alone;
  flood            the calm tenant, and the flooding tenant far above its request rate;
  flood_unlimited  the same flood with the flooding tenant's rate limit off (its override
                   `requests_per_second: 0`): what the limit buys the calm tenant.

Prints one JSON document: per tenant and phase the status counts (a request unanswered after
5 s counts under `TimeoutError`, and as 5 s in the percentiles) and latency percentiles, and
the calm tenant's percentiles as ratios to its baseline.

    python bench/tenant_limits.py --duration 10 --flood-rate 200 --calm-rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import open_loop, percentile  # noqa: E402
from tests.fixtures.servers import (  # noqa: E402
    free_port,
    postgres_database,
    redis_server,
    wait_for,
)

CLIENT_TIMEOUT_S = 5.0
ROUTE = "/v1/avatars"  # an authenticated read: key, limits, a page of the tenant's avatars


def tenant_load(port: int, key: str, rate: float, duration: float) -> dict[str, Any]:
    """One tenant's open-loop GETs (run in a child process): status counts and latencies."""
    request = (
        f"GET {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    latencies, errors = asyncio.run(
        open_loop(
            "127.0.0.1", port, lambda _: request, rate, duration, 200, timeout=CLIENT_TIMEOUT_S
        )
    )
    statuses: dict[str, int] = {}
    answered_not_ok = 0
    for name, count in errors.items():
        status = name.removeprefix("HTTP ") if name.startswith("HTTP ") else name
        statuses[status] = count
        answered_not_ok += count if name.startswith("HTTP ") else 0
    statuses["200"] = len(latencies) - answered_not_ok
    sent = int(rate * duration)
    # an unanswered request counts as the client's timeout: a lower bound of its latency
    ms = [x * 1000 for x in latencies] + [CLIENT_TIMEOUT_S * 1000] * (sent - len(latencies))
    return {
        "rate": rate,
        "sent": sent,
        "unanswered": sent - len(latencies),
        "statuses": dict(sorted(statuses.items())),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p95_ms": round(percentile(ms, 95), 2) if ms else None,
        "p99_ms": round(percentile(ms, 99), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
    }


def add_avatars(database_url: str, tenant_id: str, count: int) -> None:
    """Rows for a page of avatars, so each served GET does a real page's work."""
    from shared.db.models import Avatar, Job, JobStatus
    from shared.db.session import session_scope

    with session_scope(database_url) as session:
        for i in range(count):
            avatar = Avatar(
                tenant_id=tenant_id,
                name=f"bench-{i}",
                renderer="meanframe",
                preset="cpu-quick",
                consent=True,
                consent_key_id="bench",
                source_key="bench",
            )
            session.add(avatar)
            session.flush()
            session.add(
                Job(
                    tenant_id=tenant_id,
                    kind="avatar",
                    resource_id=avatar.id,
                    status=JobStatus.ready.value,
                    stage=JobStatus.ready.value,
                    progress=1.0,
                )
            )


def set_limits(database_url: str, tenant_id: str, limits: dict[str, Any] | None) -> None:
    """Store a tenant's overrides (the API reads them on every request)."""
    from shared.db.models import Tenant
    from shared.db.session import session_scope

    with session_scope(database_url) as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.limits = limits


def run_phase(
    pool: ProcessPoolExecutor,
    port: int,
    keys: dict[str, str],
    rates: dict[str, float],
    duration: float,
) -> dict[str, Any]:
    """Every tenant in `rates` at once, each from its own process."""
    futures = {
        name: pool.submit(tenant_load, port, keys[name], rate, duration)
        for name, rate in rates.items()
    }
    return {name: future.result() for name, future in futures.items()}


def main() -> None:
    """Start the API and its servers, run the phases, print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--calm-rate", type=float, default=10.0, help="calm tenant's requests/s")
    ap.add_argument("--flood-rate", type=float, default=200.0, help="flooding tenant's requests/s")
    ap.add_argument("--limit-rate", type=float, default=20.0, help="per-tenant requests/s")
    ap.add_argument("--limit-burst", type=int, default=40, help="per-tenant burst")
    ap.add_argument("--skip-unlimited", action="store_true", help="no flood_unlimited phase")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from services.api.app import create_app
    from shared.config import Settings
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope
    from shared.tenants import create_tenant

    with (
        tempfile.TemporaryDirectory(prefix="th-bench-limits-") as tmp,
        redis_server() as redis_url,
        postgres_database() as database_url,
    ):
        upgrade(database_url)
        tenants: dict[str, str] = {}
        keys: dict[str, str] = {}
        with session_scope(database_url) as session:
            for name in ("calm", "flood"):
                tenant, keys[name] = create_tenant(session, f"bench-{name}")
                tenants[name] = tenant.id
        for tenant_id in tenants.values():
            add_avatars(database_url, tenant_id, 20)  # a full default page
        settings = Settings(
            _env_file=None,
            data_dir=Path(tmp),
            database_url=database_url,
            redis_url=redis_url,
            tenant_requests_per_second=args.limit_rate,
            tenant_burst=args.limit_burst,
            log_level="WARNING",
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        phases: dict[str, Any] = {}
        try:
            wait_for(
                lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 30, "api"
            )
            with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
                calm = {"calm": args.calm_rate}
                run_phase(pool, port, keys, {"calm": 2.0, "flood": 2.0}, 1.0)  # warm both up
                phases["baseline"] = run_phase(pool, port, keys, calm, args.duration)
                time.sleep(1.0)
                flood = {**calm, "flood": args.flood_rate}
                phases["flood"] = run_phase(pool, port, keys, flood, args.duration)
                if not args.skip_unlimited:
                    time.sleep(1.0)
                    set_limits(database_url, tenants["flood"], {"requests_per_second": 0})
                    phases["flood_unlimited"] = run_phase(pool, port, keys, flood, args.duration)
        finally:
            server.should_exit = True
            thread.join(20)

    base = phases["baseline"]["calm"]
    ratios = {
        phase: {
            q: round(result["calm"][q] / base[q], 2) if base[q] and result["calm"][q] else None
            for q in ("p50_ms", "p95_ms", "p99_ms")
        }
        for phase, result in phases.items()
        if phase != "baseline"
    }
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}",
                "route": f"GET {ROUTE}",
                "duration_s": args.duration,
                "limit": {"requests_per_second": args.limit_rate, "burst": args.limit_burst},
                "phases": phases,
                "calm_latency_vs_baseline": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
