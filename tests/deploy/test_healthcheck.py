"""deploy/docker/healthcheck.py, the check every talkinghead container runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from tests.deploy.promql import ROOT
from tests.fixtures.servers import free_port

SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/healthz": 200, "/metrics": 200, "/v2/health/ready": 503}.get(self.path, 404)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TH_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_api_and_worker_modes_follow_the_configured_ports(port: int) -> None:
    assert check("api", TH_API_PORT=str(port)).returncode == 0
    assert check("worker", TH_WORKER_METRICS_PORT=str(port)).returncode == 0
    assert check("api", TH_API_PORT=str(free_port())).returncode == 1  # nothing listens
    unset = check("worker")
    assert unset.returncode == 1 and "TH_WORKER_METRICS_PORT" in unset.stderr


def test_url_mode_needs_a_2xx(port: int) -> None:
    assert check("url", f"http://127.0.0.1:{port}/healthz").returncode == 0
    not_ready = check("url", f"http://127.0.0.1:{port}/v2/health/ready")
    assert not_ready.returncode == 1 and "503" in not_ready.stderr
    assert check("bogus").returncode == 2


def test_deps_mode_checks_the_database_and_the_broker(redis_url: str, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'th.db'}"
    ok = check("deps", TH_DATABASE_URL=database, TH_REDIS_URL=redis_url)
    assert ok.returncode == 0, ok.stderr
    no_broker = check(
        "deps", TH_DATABASE_URL=database, TH_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    assert no_broker.returncode == 1 and "unhealthy" in no_broker.stderr
    no_database = check(
        "deps",
        TH_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        TH_REDIS_URL=redis_url,
    )
    assert no_database.returncode == 1
