"""`make demo`: the whole product on one machine, driven through the REST API.

Starts the embedded stack, creates a tenant, builds an avatar from a video (`VIDEO=path`, or
a generated clip), renders speech with it (`AUDIO=path`, or a generated tone) and writes
`demo-output/out.mp4` plus the avatar's quality figures.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from shared.db.session import session_scope
from shared.tenants import create_tenant
from talkinghead.media import probe
from talkinghead.synthetic import generate, speech

console = Console(stderr=True)


def _speech_in_another_voice(out: Path) -> Path:
    """Speech the avatar never heard, from a different espeak-ng voice."""
    speech(
        out,
        "Hello! This is a talking head, speaking words it was never trained on.",
        voice="en-us+f3",
        seconds=4.0,
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


def main() -> int:
    """Run the demo; returns the process exit code."""
    out_dir = Path(os.environ.get("DEMO_OUTPUT", "demo-output")).resolve()
    data_dir = Path(os.environ.get("DEMO_DATA_DIR", ".talkinghead/demo")).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    video = (
        Path(os.environ["VIDEO"])
        if os.environ.get("VIDEO")
        else generate(out_dir / "input", seconds=8.0, size=512).video
    )
    audio = (
        Path(os.environ["AUDIO"])
        if os.environ.get("AUDIO")
        else _speech_in_another_voice(out_dir / "speech.wav")
    )

    console.print(f"[bold]starting the embedded stack[/] in {data_dir}")
    with EmbeddedStack(data_dir, env={"TH_LOG_LEVEL": "WARNING"}) as stack:
        with session_scope(stack.settings.database_url) as s:
            _, api_key = create_tenant(s, "demo")
        client = TalkingHeadClient(stack.base_url, api_key)
        console.print(f"API at {stack.base_url}  (docs: {stack.base_url}/docs)")

        avatar = client.create_avatar(
            video, consent=True, name="demo", metadata={"source": str(video)}
        )
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

    info = probe(out)
    figures = {
        "avatar_id": avatar["id"],
        "renderer": avatar["renderer"],
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
    console.print(f"  figures  {out_dir / 'figures.json'}")
    console.print_json(json.dumps(figures["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
