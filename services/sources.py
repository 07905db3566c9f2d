"""What a family's stage reads, fetched from the avatar's stored artifacts into scratch."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.runner import JobContext
from shared.db.models import Avatar
from shared.jobs import JobError
from talkinghead.families.contract import AvatarSource, FamilyError, RendererFamily
from talkinghead.families.registry import UnknownFamily, get_family

# AvatarSource field -> (artifact kind, local name); directories come as tar archives.
FILES = {
    "video": ("video", "video.mp4"),
    "audio": ("audio", "audio.wav"),
    "image": ("image", "image.png"),
}
ARCHIVES = {"dataset": "dataset", "prepared": "prepared"}


@contextmanager
def family_errors() -> Iterator[None]:
    """A family's coded failures end the job with the same code."""
    try:
        yield
    except FamilyError as exc:
        raise JobError(exc.code, exc.message) from None


def avatar_of(ctx: JobContext) -> Avatar:
    """The avatar this job builds."""
    avatar = ctx.resource()
    if not isinstance(avatar, Avatar):
        raise JobError("internal_error", "this stage builds avatars")
    return avatar


def family_of(avatar: Avatar) -> RendererFamily:
    """The avatar's renderer family; fails the job when this build does not have it."""
    try:
        return get_family(avatar.renderer)
    except UnknownFamily as exc:
        raise JobError("renderer_unavailable", str(exc)) from None


def pinned_config(ctx: JobContext, family: RendererFamily, avatar: Avatar) -> dict[str, Any]:
    """The avatar's preset config, pinned in the job state by its first training step.

    Later segments and the export use the pinned copy, so a deployment that retunes a preset
    does not break the avatars already training with it.
    """
    pinned = ctx.job.state.get("config")
    if isinstance(pinned, dict):
        return pinned
    with family_errors():
        return family.config(avatar.preset)


def artifact_key(ctx: JobContext, kind: str) -> str:
    """The stored key of an artifact this avatar already has."""
    art = ctx.artifact(kind)
    if art is None:
        raise JobError("internal_error", f"missing {kind} artifact")
    return art.key


def unpack(ctx: JobContext, kind: str) -> Path:
    """Download a tar artifact into the step's scratch dir and unpack it; returns its root."""
    archive = ctx.fetch(artifact_key(ctx, kind), f"{kind}.tar")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise JobError("internal_error", f"unexpected entry {member.name!r} in {kind}")
        # The checks above are what `filter="data"` does, for Pythons that lack it.
        safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(ctx.workdir, **safe)
    archive.unlink()
    root = ctx.workdir / kind
    if not root.is_dir():
        raise JobError("internal_error", f"the stored {kind} archive has no {kind}/ folder")
    return root


def pack(directory: Path, archive: Path) -> Path:
    """`directory` as an uncompressed tar whose root is the directory's name."""
    with tarfile.open(archive, "w") as tar:  # uncompressed: frames are already JPEG/PNG
        tar.add(directory, arcname=directory.name)
    return archive


def avatar_source(ctx: JobContext, family: RendererFamily) -> AvatarSource:
    """Fetch what the family reads and the avatar has so far (later stages' outputs are None)."""
    found: dict[str, Path] = {}
    for name in sorted(family.reads):
        if name in FILES:
            kind, local = FILES[name]
            if ctx.artifact(kind) is not None:
                found[name] = ctx.fetch(artifact_key(ctx, kind), local)
        elif name in ARCHIVES:
            if ctx.artifact(ARCHIVES[name]) is not None:
                found[name] = unpack(ctx, ARCHIVES[name])
        else:
            raise JobError("internal_error", f"{family.name} reads an unknown source {name!r}")
    return AvatarSource(**found)
