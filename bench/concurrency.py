"""Concurrent jobs against the same jobs one after another, on the embedded stack (issue 13).

One avatar (`tiny` preset) is built; then, in one run:
  serial      RENDERS renders submitted one at a time (each waits for the previous);
  concurrent  1, 2, 4 and 8 renders submitted at once;
  training    2 avatar builds one after the other, then 2 at once.
The wall time of N concurrent jobs is compared with the sum of the first N serial jobs'
times (the same work, serial): a ratio <= 1.0 means running them together costs nothing.
Per-job latency (submitted -> done, from the job rows) is reported as percentiles.

    python bench/concurrency.py --json /tmp/concurrency.json
    python bench/concurrency.py --levels 1,2 --speech-seconds 4 --no-training   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.client import TalkingHeadClient  # noqa: E402
from services.embedded import EmbeddedStack  # noqa: E402
from shared.db.models import Job  # noqa: E402
from shared.db.session import session_scope  # noqa: E402
from shared.tenants import create_tenant  # noqa: E402
from talkinghead.synthetic import generate, speech  # noqa: E402


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def job_times(stack: EmbeddedStack, resource_ids: list[str]) -> list[tuple[float, float]]:
    """(created, finished) epoch seconds of each resource's job, from the database."""
    from sqlalchemy import select

    with session_scope(stack.settings.database_url) as s:
        rows = {
            j.resource_id: j
            for j in s.scalars(select(Job).where(Job.resource_id.in_(resource_ids)))
        }
        out = []
        for rid in resource_ids:
            job = rows[rid]
            assert job.finished_at is not None, f"{rid} did not finish"
            out.append((job.created_at.timestamp(), job.finished_at.timestamp()))
    return out


def summary(times: list[tuple[float, float]]) -> dict[str, Any]:
    """Wall time of a batch and its jobs' latency percentiles."""
    latency = np.array([end - start for start, end in times])
    return {
        "jobs": len(times),
        "wall_s": round(max(e for _, e in times) - min(s for s, _ in times), 2),
        "latency_s": {
            "p50": round(float(np.percentile(latency, 50)), 2),
            "p95": round(float(np.percentile(latency, 95)), 2),
            "max": round(float(latency.max()), 2),
        },
    }


def run_jobs(
    client: TalkingHeadClient, kind: str, submit: Callable[[], str], n: int, together: bool
) -> list[str]:
    """Submit n jobs (all at once, or each after the previous ended); their ids, all ended."""
    success = "done" if kind == "render" else "ready"
    ids = []
    for _ in range(n):
        ids.append(submit())
        if not together:
            done = client.wait(kind, ids[-1], timeout=3600)
            assert done["status"] == success, done.get("error")
    for rid in ids:
        done = client.wait(kind, rid, timeout=3600)
        assert done["status"] == success, done.get("error")
    return ids


def renders(
    client: TalkingHeadClient, avatar_id: str, audio: Path, n: int, together: bool
) -> list[str]:
    """n renders of `audio` by the avatar."""
    submit = lambda: client.create_render(avatar_id, audio)["id"]  # noqa: E731
    return run_jobs(client, "render", submit, n, together)


def builds(client: TalkingHeadClient, video: Path, n: int, together: bool) -> list[str]:
    """n `tiny` avatars built from `video`."""
    submit = lambda: client.create_avatar(video, consent=True, preset="tiny")["id"]  # noqa: E731
    return run_jobs(client, "avatar", submit, n, together)


def main() -> None:
    """Run the batches and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,2,4,8", help="concurrent renders per batch")
    parser.add_argument("--speech-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's pool size")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="threads per pool process; 0: the thread budget; the cores: the old default",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    figures: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="th-concurrency-") as tmp:
        work = Path(tmp)
        video = generate(work / "input", seconds=8.0, size=256).video
        text = "Hello there, this is a talking head. " * 20
        audio = work / "speech.wav"
        speech(audio, text, voice="en-us", seconds=args.speech_seconds)
        # The tenant limits must not refuse the bench's own batches.
        env = {
            "TH_LOG_LEVEL": "WARNING",
            "TH_TENANT_MAX_QUEUED_JOBS": "1000",
            "TH_TENANT_MAX_RUNNING_JOBS": "1000",
            "TH_TENANT_REQUESTS_PER_SECOND": "1000",
        }
        if args.torch_threads:  # before thread budgets: torch and x264 on every core
            env.update(TH_TORCH_THREADS=str(args.torch_threads), TH_FFMPEG_THREADS="0")
        with EmbeddedStack(work / "state", concurrency=args.concurrency, env=env) as stack:
            with session_scope(stack.settings.database_url) as s:
                _, key = create_tenant(s, "bench")
            with TalkingHeadClient(stack.base_url, key, timeout=120) as client:
                log("building the avatar")
                avatar = builds(client, video, 1, together=False)[0]
                log("serial renders")
                serial = job_times(stack, renders(client, avatar, audio, max(levels), False))
                figures["serial"] = summary(serial)
                for n in levels:
                    log(f"{n} concurrent renders")
                    batch = summary(job_times(stack, renders(client, avatar, audio, n, True)))
                    same_work = sum(end - start for start, end in serial[:n])
                    batch["serial_same_work_s"] = round(same_work, 2)
                    batch["ratio"] = round(batch["wall_s"] / same_work, 3)
                    figures[f"renders_{n}"] = batch
                    log(json.dumps(batch))
                if not args.no_training:
                    log("2 trainings one after the other")
                    one_by_one = summary(job_times(stack, builds(client, video, 2, False)))
                    log("2 trainings at once")
                    both = summary(job_times(stack, builds(client, video, 2, True)))
                    both["serial_same_work_s"] = one_by_one["wall_s"]
                    both["ratio"] = round(both["wall_s"] / one_by_one["wall_s"], 3)
                    figures["trainings_serial"] = one_by_one
                    figures["trainings_2"] = both
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
