"""`make demo`: the whole product on one machine, driven through the REST API.

Starts the embedded stack, creates a tenant, builds a RAD-NeRF avatar (`cpu-quick`) from a
video (`VIDEO=path`, or the synthetic generator's 30 s clip), renders speech in a voice it
never heard (`AUDIO=path`, or espeak-ng) and writes `demo-output/out.mp4`, a side-by-side
image of held-out frames (ground truth | render) and the avatar's quality figures.
`DEMO_QUICK=1` runs the same path with the `tiny` preset on a short clip (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from shared.db.models import Artifact
from shared.db.session import session_scope
from shared.tenants import create_tenant
from talkinghead.media import probe
from talkinghead.synthetic import generate, speech

console = Console(stderr=True)


def _speech_in_another_voice(out: Path, seconds: float) -> Path:
    """Speech the avatar never heard, from a different espeak-ng voice."""
    speech(
        out,
        "Hello! This is a talking head, speaking words it was never trained on.",
        voice="en-us+f3",
        seconds=seconds,
    )
    return out


def follow(client: TalkingHeadClient, kind: str, resource_id: str, label: str) -> dict[str, Any]:
    """Follow a job's events with a progress bar until it ends."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=1.0, stage="queued")

        def update(event: dict[str, Any]) -> None:
            bar.update(
                task, completed=float(event.get("progress", 0.0)), stage=str(event.get("stage", ""))
            )

        return client.wait(kind, resource_id, on_event=update, timeout=3600)


@dataclass(frozen=True)
class DemoPlan:
    """What the demo builds: the full product, or the quick CI variant."""

    preset: str
    clip_seconds: float
    speech_seconds: float

    @classmethod
    def from_env(cls) -> DemoPlan:
        """`DEMO_QUICK=1` selects the quick variant."""
        if os.environ.get("DEMO_QUICK", "") not in ("", "0"):
            return cls("tiny", 8.0, 2.0)
        return cls("cpu-quick", 30.0, 4.0)


def side_by_side(stack: EmbeddedStack, avatar_id: str, out: Path, rows: int = 4) -> Path:
    """Held-out frames: ground truth left, the exported renderer right, one row per frame."""
    import numpy as np

    from services.renderer.avatars import AvatarCache
    from shared.storage import build_store
    from talkinghead.components.compositing import over_background
    from talkinghead.data.frames import TrainingData
    from talkinghead.media import write_png

    store = build_store(stack.settings)
    exported = AvatarCache(store).get(avatar_id)
    scratch = out.parent / "dataset"
    shutil.rmtree(scratch, ignore_errors=True)
    with session_scope(stack.settings.database_url) as s:
        key = s.scalar(
            select(Artifact.key).where(
                Artifact.resource_id == avatar_id, Artifact.kind == "dataset"
            )
        )
    store.download(str(key), out.parent / "dataset.tar")
    with tarfile.open(out.parent / "dataset.tar") as tar:
        tar.extractall(scratch, filter="data")
    (out.parent / "dataset.tar").unlink()
    data = TrainingData(scratch / "dataset", exported.size)
    k = next(spec.shape[0] for spec in exported.inputs if spec.name == "audio")
    ids = [int(i) for i in np.linspace(0, len(data.val_ids) - 1, rows).round()]
    lines = []
    for i in (int(data.val_ids[j]) for j in ids):
        inputs = {"pose": data.pose(i)[None], "audio": data.audio(i, k)[None]}
        rgba = exported.render({**inputs, "eye": np.array([data.eye(i)], np.float32)})
        lines.append(np.hstack([data.frame(i).rgb, over_background(rgba[0], data.background())]))
    write_png(out, np.vstack(lines))
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def main() -> int:
    """Run the demo; returns the process exit code."""
    out_dir = Path(os.environ.get("DEMO_OUTPUT", "demo-output")).resolve()
    data_dir = Path(os.environ.get("DEMO_DATA_DIR", ".talkinghead/demo")).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plan = DemoPlan.from_env()

    video = (
        Path(os.environ["VIDEO"])
        if os.environ.get("VIDEO")
        else generate(out_dir / "input", seconds=plan.clip_seconds, size=256).video
    )
    audio = (
        Path(os.environ["AUDIO"])
        if os.environ.get("AUDIO")
        else _speech_in_another_voice(out_dir / "speech.wav", plan.speech_seconds)
    )

    console.print(f"[bold]starting the embedded stack[/] in {data_dir}")
    with EmbeddedStack(data_dir, env={"TH_LOG_LEVEL": "WARNING"}) as stack:
        with session_scope(stack.settings.database_url) as s:
            _, api_key = create_tenant(s, "demo")
        client = TalkingHeadClient(stack.base_url, api_key)
        console.print(f"API at {stack.base_url}  (docs: {stack.base_url}/docs)")

        avatar = client.create_avatar(
            video, consent=True, name="demo", preset=plan.preset,
            metadata={"source": str(video)},
        )  # fmt: skip
        avatar = follow(client, "avatar", avatar["id"], "building avatar")
        if avatar["status"] != "ready":
            console.print(f"[red]avatar {avatar['status']}[/]: {avatar.get('error')}")
            return 1

        render = client.create_render(avatar["id"], audio)
        render = follow(client, "render", render["id"], "rendering")
        if render["status"] != "done":
            console.print(f"[red]render {render['status']}[/]: {render.get('error')}")
            return 1
        out = out_dir / "out.mp4"
        client.download_video(render["id"], out)
        console.print("comparing held-out frames with the ground truth")
        image = side_by_side(stack, avatar["id"], out_dir / "side-by-side.png")

    info = probe(out)
    figures = {
        "avatar_id": avatar["id"],
        "renderer": avatar["renderer"],
        "preset": avatar["preset"],
        "metrics": avatar["metrics"],
        "video": {
            "duration_s": round(info.duration_s, 3),
            "codec": info.video.codec if info.video else None,
            "audio_codec": info.audio.codec if info.audio else None,
        },
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=2))
    console.print(f"[green]done[/] in {figures['wall_time_s']} s")
    console.print(f"  video    {out}")
    console.print(f"  compare  {image}  (held-out frames: ground truth | render)")
    console.print(f"  figures  {out_dir / 'figures.json'}")
    console.print_json(json.dumps(figures["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
