"""Serving (issue 5): Triton vs in-process frames/s, whole render jobs, time to first frame.

One `radnerf` avatar is built through the REST API of the embedded stack (`cpu-quick` on the
synthetic 30 s clip, as `make demo` does). Then, in this run:
  (a) frames/s of the same avatar through Triton (the wheel's `tritonserver`, HTTP and gRPC,
      batches of 8 frames) and through the in-process backend, rounds alternated so that
      machine noise hits both; overhead = 1 - triton / in-process (goal <= 15 %);
  (b) whole render jobs through the REST API (upload, speech normalisation, features,
      frames, compositing, H.264 + AAC encode, store): real-time factor = seconds of video
      per second of wall time from POST to `done`, at 128x128 (the training size) and
      256x256 (the avatar re-exported with a 2x camera), with the worker's backend
      in-process (embedded mode) and Triton;
  (c) time from `POST render` to the first frame produced (the job records it).

    python bench/serving.py --json serving.json   # about 15 minutes on 2 cores
    python bench/serving.py --quick               # smoke check with the tiny preset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from services.renderer.avatars import AvatarCache
from services.renderer.backends import FrameBackend, InProcessBackend, TritonBackend
from services.tritonserver import TritonServer
from shared.db.models import Artifact, Job
from shared.db.session import session_scope
from shared.exports import upload_export
from shared.storage import LocalObjectStore
from shared.tenants import create_tenant
from talkinghead.families.radnerf.config import RadNerfConfig
from talkinghead.families.radnerf.driving import assets_of
from talkinghead.families.radnerf.export import export_avatar
from talkinghead.families.radnerf.training import RadNerfTrainer
from talkinghead.synthetic import generate, speech


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg()[0],
    }


def build_avatar(client: TalkingHeadClient, work: Path, preset: str, seconds: float) -> str:
    """A radnerf avatar made through the REST API; returns its id."""
    clip = generate(work / "clip", seconds=seconds, size=256, seed=5)
    started = time.monotonic()
    created = client.create_avatar(clip.video, consent=True, renderer="radnerf", preset=preset)
    avatar = client.wait("avatar", created["id"], timeout=3600)
    if avatar["status"] != "ready":
        raise SystemExit(f"avatar failed: {avatar.get('error')}")
    print(f"avatar {avatar['id']} ready in {time.monotonic() - started:.0f} s", flush=True)
    return str(avatar["id"])


def reexport(stack: EmbeddedStack, avatar_id: str, size: int, work: Path) -> None:
    """Export the avatar's stored weights again at `size` x `size`, replacing its export."""
    store = LocalObjectStore(stack.settings.local_storage_dir)
    with session_scope(stack.settings.database_url) as s:
        job = s.scalar(select(Job).where(Job.resource_id == avatar_id))
        dataset = s.scalar(
            select(Artifact.key).where(
                Artifact.resource_id == avatar_id, Artifact.kind == "dataset"
            )
        )
        assert job is not None and dataset is not None
        state = dict(job.state)
    root = work / f"reexport-{size}"
    store.download(dataset, root / "dataset.tar")
    with tarfile.open(root / "dataset.tar") as tar:
        tar.extractall(root, filter="data")
    store.download(state["checkpoint"], root / "checkpoint.pt")
    config = RadNerfConfig.from_dict(state["config"])
    trainer = RadNerfTrainer(root / "dataset", root / "run", config)
    trainer.load(root / "checkpoint.pt")
    with trainer.ema.applied():
        export_avatar(
            trainer.model, assets_of(trainer.data), trainer.data.reader.manifest.audio,
            root / "export", info={"avatar_id": avatar_id}, size=size,
        )  # fmt: skip
    upload_export(store, avatar_id, root / "export")


def frames_per_second(
    backends: dict[str, FrameBackend], avatar_id: str, cache: AvatarCache, frames: int, rounds: int
) -> dict[str, float]:
    """Median frames/s of each backend over alternated rounds of `frames` frames."""
    ex = cache.get(avatar_id)
    k, w, d = ex.input_shape("audio")
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 1, (8, k, w, d)).astype(np.float32)
    poses, eyes = ex.assets["poses"][:8], ex.assets["eyes"][:8]
    for backend in backends.values():  # warm up: load, first-call costs
        backend.render(avatar_id, "radnerf", {"pose": poses, "audio": audio, "eye": eyes})
    rates: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            started = time.perf_counter()
            for _ in range(frames // 8):
                backend.render(avatar_id, "radnerf", {"pose": poses, "audio": audio, "eye": eyes})
            rates[name].append((frames // 8) * 8 / (time.perf_counter() - started))
    return {name: round(statistics.median(r), 2) for name, r in rates.items()}


def render_job(
    client: TalkingHeadClient, stack: EmbeddedStack, avatar_id: str, audio: Path, seconds: float
) -> dict[str, float]:
    """One render through the REST API: wall time from POST to done, RTF, first frame."""
    started = time.monotonic()
    rnd = client.create_render(avatar_id, audio)
    done = client.wait("render", rnd["id"], timeout=3600)
    wall = time.monotonic() - started
    if done["status"] != "done":
        raise SystemExit(f"render failed: {done.get('error')}")
    with session_scope(stack.settings.database_url) as s:
        state = s.scalar(select(Job.state).where(Job.resource_id == rnd["id"]))
    return {
        "wall_s": round(wall, 2),
        "video_s": seconds,
        "rtf": round(seconds / wall, 3),
        "first_frame_s": float(state["first_frame_s"]),
        "frames": int(state["frames"]),
    }


def main() -> None:
    """Run (a), (b), (c); print and optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="cpu-quick")
    ap.add_argument("--clip-s", type=float, default=30.0)
    ap.add_argument("--speech-s", type=float, default=10.0, help="length of each render")
    ap.add_argument("--frames", type=int, default=64, help="frames per round of (a)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of (a)")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.clip_s, args.speech_s, args.frames, args.rounds = "tiny", 8.0, 2.0, 8, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"json": str(args.json)}}
    work = Path(tempfile.mkdtemp(prefix="th-bench-serving-"))
    audio = work / "speech.wav"
    speech(audio, "Speech for the serving benchmark, in a voice the avatar never heard. " * 4,
           "en-us+f3", args.speech_s)  # fmt: skip
    data_dir = work / "state"
    objects = data_dir / "objects"
    objects.mkdir(parents=True)
    key: str | None = None
    # Exports are replaced in place between sizes: caches re-check the manifest every request.
    fresh = {"TH_AVATAR_REVALIDATE_S": "0"}
    triton_env = {"TH_STORAGE_DIR": str(objects), "TH_DATA_DIR": str(data_dir), **fresh}
    with TritonServer(env=triton_env) as triton:
        for backend_name in ("inprocess", "triton"):
            env = {"TH_LOG_LEVEL": "WARNING", "TH_RENDER_BACKEND": backend_name, **fresh}
            env["TH_TRITON_URL"] = triton.http_url
            with EmbeddedStack(data_dir, env=env, concurrency=1) as stack:
                if key is None:  # the second stack reuses the state dir, tenant and avatar
                    with session_scope(stack.settings.database_url) as s:
                        _, key = create_tenant(s, "bench")
                client = TalkingHeadClient(stack.base_url, key)
                if "avatar_id" not in results:
                    results["avatar_id"] = build_avatar(client, work, args.preset, args.clip_s)
                avatar_id = results["avatar_id"]
                for size in sizes:
                    reexport(stack, avatar_id, size, work)
                    cache = AvatarCache(LocalObjectStore(objects), revalidate_s=0)
                    if backend_name == "inprocess":
                        backends: dict[str, FrameBackend] = {
                            "inprocess": InProcessBackend(cache),
                            "triton_http": TritonBackend(triton.http_url),
                            "triton_grpc": TritonBackend(triton.grpc_url, "grpc"),
                        }
                        fps = frames_per_second(
                            backends, avatar_id, cache, args.frames, args.rounds
                        )
                        fps["overhead_http"] = round(1 - fps["triton_http"] / fps["inprocess"], 3)
                        fps["overhead_grpc"] = round(1 - fps["triton_grpc"] / fps["inprocess"], 3)
                        results.setdefault("fps", {})[str(size)] = fps
                        print(f"(a) {size}px frames/s {fps}", flush=True)
                    # The first job also pays for loading the avatar; the second is steady state.
                    jobs = [
                        render_job(client, stack, avatar_id, audio, args.speech_s) for _ in "ab"
                    ]
                    results.setdefault("jobs", {}).setdefault(backend_name, {})[str(size)] = jobs
                    print(f"(b,c) {backend_name} {size}px {jobs}", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=2))
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
