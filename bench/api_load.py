"""Open-loop API load: the highest fixed arrival rate each route sustains with p99 <= target.

Requests are sent on a fixed schedule whatever the server's pace (open loop), and latency is
measured from each request's *scheduled* time, so a stalled server cannot hide its queueing
(no coordinated omission). Each rate runs for a bounded time; the ladder stops at the first
rate that misses the p99 target or has any error. `GET /healthz` (no auth, no database) is
measured in the same run as the baseline that shows what the machine itself allows.

    python bench/api_load.py --duration 8 --rates 50,100,200,300,400,600,800
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import make_video  # noqa: E402
from tests.fixtures.servers import free_port, redis_server, wait_for  # noqa: E402


@dataclass
class Step:
    """One rate of the ladder for one route."""

    route: str
    rate: float
    sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def ok(self, p99_target_ms: float) -> bool:
        """Whether this step meets the goal."""
        return self.errors == 0 and self.p99_ms <= p99_target_ms


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def open_loop(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    rate: float,
    duration: float,
    ok_status: int,
    timeout: float = 5.0,
) -> tuple[list[float], dict[str, int]]:
    """Send `rate` req/s for `duration` s over keep-alive connections; returns latencies, errors."""
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    start = loop.time() + 0.2
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def send(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], i: int) -> int:
        reader, writer = conn
        writer.write(make_request(i))
        return await asyncio.wait_for(_read_response(reader), timeout)

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        conn = idle.pop() if idle else None
        try:
            if conn is not None:
                try:
                    status = await send(conn, i)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # The server closed this keep-alive connection while it sat idle: retry
                    # once on a new one, as every HTTP client does.
                    conn[1].close()
                    conn = None
            if conn is None:
                conn = await asyncio.open_connection(host, port)
                status = await send(conn, i)
            latencies.append(loop.time() - scheduled)
            if status != ok_status:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            idle.append(conn)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if conn is not None:
                conn[1].close()

    await asyncio.gather(*(one(i) for i in range(total)))
    for _, writer in idle:
        writer.close()
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, nearest-rank."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def ladder(
    route: str,
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    ok_status: int,
    rates: list[float],
    duration: float,
    p99_target_ms: float,
) -> list[Step]:
    """Run rising rates until one misses the target; returns every step run."""
    steps = []
    for rate in rates:
        lat, errors = asyncio.run(open_loop(host, port, make_request, rate, duration, ok_status))
        ms = [x * 1000 for x in lat]
        step = Step(
            route,
            rate,
            int(rate * duration),
            sum(errors.values()),
            round(statistics.median(ms), 2) if ms else float("inf"),
            round(percentile(ms, 99), 2),
            round(max(ms), 2) if ms else float("inf"),
        )
        steps.append(step)
        print(
            f"  {route:<28} {rate:>6.0f}/s  p50 {step.p50_ms:>7.2f} ms  p99 {step.p99_ms:>8.2f} ms"
            f"  errors {sum(errors.values())} {errors or ''}",
            flush=True,
        )
        if not step.ok(p99_target_ms):
            break
        time.sleep(1.0)  # let the server drain before the next rate
    return steps


def best(steps: list[Step], target: float) -> float:
    """The highest rate that met the target (0 if none did)."""
    return max((s.rate for s in steps if s.ok(target)), default=0.0)


def multipart_avatar(video: bytes, boundary: str) -> bytes:
    """A small multipart POST /v1/avatars body."""
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="consent"\r\n\r\ntrue\r\n'
        ).encode(),
        (f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbench\r\n').encode(),
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + video
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)


def main() -> None:
    """Start an API with its real dependencies, run the ladders, print and save the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="100,200,250,300,350,400,500,600,800,1000,1200,1600")
    ap.add_argument("--post-rates", default="10,20,30,40,50,60,80,100,150,200")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    ap.add_argument("--p99-ms", type=float, default=50.0)
    ap.add_argument("--api-workers", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    post_rates = [float(r) for r in args.post_rates.split(",")]

    with tempfile.TemporaryDirectory(prefix="th-bench-") as tmp, redis_server() as redis_url:
        root = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "TH_DATA_DIR": str(root / "data"),
            "TH_REDIS_URL": redis_url,
            "TH_API_PORT": str(port),
            "TH_LOG_LEVEL": "WARNING",
            # What one tenant's routes sustain, so no tenant limit may cut the ladder short
            # (bench/tenant_limits.py measures the limits).
            "TH_TENANT_REQUESTS_PER_SECOND": "0",
            "TH_TENANT_MAX_QUEUED_JOBS": "0",
        }
        subprocess.run(
            [sys.executable, "-m", "services.cli", "migrate"],
            env=env,
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        out = subprocess.run(
            [sys.executable, "-m", "services.cli", "admin", "tenant", "create", "bench", "--json"],
            env=env,
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        key = json.loads(out.stdout)["api_key"]
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "services.api.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.api_workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 60, "api")
            video = make_video(root / "small.mp4", seconds=1.0, size=64).read_bytes()
            auth = f"Authorization: Bearer {key}\r\n"
            created = httpx.post(
                f"{base}/v1/avatars",
                headers={"Authorization": f"Bearer {key}"},
                files={"video": ("v.mp4", video, "video/mp4")},
                data={"consent": "true"},
                timeout=30,
            )
            created.raise_for_status()
            avatar_id = created.json()["id"]
            host = f"Host: 127.0.0.1:{port}\r\n"
            get_health = f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()
            get_avatar = f"GET /v1/avatars/{avatar_id} HTTP/1.1\r\n{host}{auth}\r\n".encode()
            boundary = uuid.uuid4().hex
            body = multipart_avatar(video, boundary)

            def post_avatar(_: int) -> bytes:
                return (
                    f"POST /v1/avatars HTTP/1.1\r\n{host}{auth}"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body

            print(
                f"open-loop ladders, {args.duration:.0f} s per rate, p99 target "
                f"{args.p99_ms:.0f} ms, {args.api_workers} API worker(s)"
            )
            results = {
                "GET /healthz (baseline)": ladder(
                    "GET /healthz",
                    "127.0.0.1",
                    port,
                    lambda _: get_health,
                    200,
                    rates,
                    args.duration,
                    args.p99_ms,
                ),
                "GET /v1/avatars/{id}": ladder(
                    "GET /v1/avatars/{id}",
                    "127.0.0.1",
                    port,
                    lambda _: get_avatar,
                    200,
                    rates,
                    args.duration,
                    args.p99_ms,
                ),
                "POST /v1/avatars": ladder(
                    "POST /v1/avatars",
                    "127.0.0.1",
                    port,
                    post_avatar,
                    202,
                    post_rates,
                    args.duration,
                    args.p99_ms,
                ),
            }
        finally:
            api.terminate()
            api.wait(20)

    baseline = best(results["GET /healthz (baseline)"], args.p99_ms)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}"
    )
    print(f"| route | highest rate with p99 <= {args.p99_ms:.0f} ms, 0 errors | vs baseline |")
    print("|---|---|---|")
    for route, steps in results.items():
        rate = best(steps, args.p99_ms)
        ratio = f"{rate / baseline:.2f}" if baseline else "n/a"
        print(f"| {route} | {rate:.0f} req/s | {ratio} |")
    if args.json:
        args.json.write_text(
            json.dumps({k: [asdict(s) for s in v] for k, v in results.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
