"""Where exported renderers live in the object store, and how they move in and out of it.

An export sits under `exports/{avatar_id}/` (not under the tenant's prefix) because the
renderer service (Triton) is given only an avatar id; avatar ids are unguessable and the
tenant check happens in the API before any render reaches it. The manifest is uploaded last
and downloaded first, so a reader never sees a half-written export as complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.storage import ObjectNotFound, ObjectStore, validate_part

MANIFEST = "manifest.json"


def export_prefix(avatar_id: str) -> str:
    """The key prefix of an avatar's export (ends with '/')."""
    return f"exports/{validate_part(avatar_id)}/"


def manifest_key(avatar_id: str) -> str:
    """The key of the manifest: its presence commits the export."""
    return export_prefix(avatar_id) + MANIFEST


def upload_export_files(store: ObjectStore, avatar_id: str, directory: Path) -> None:
    """Store the files the local export's manifest lists, but not the manifest itself."""
    manifest = json.loads((directory / MANIFEST).read_text())
    for name in manifest["files"]:
        store.put_file(export_prefix(avatar_id) + name, directory / name)


def upload_export(store: ObjectStore, avatar_id: str, directory: Path) -> str:
    """Store every file of a local export directory, the manifest last; returns its key."""
    upload_export_files(store, avatar_id, directory)
    key = manifest_key(avatar_id)
    store.put_file(key, directory / MANIFEST, content_type="application/json")
    return key


class ExportNotFound(LookupError):
    """The avatar has no (complete) export in the store."""


def download_export(
    store: ObjectStore, avatar_id: str, directory: Path, only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Fetch an export (or `only` some of its files) into `directory`; the loader verifies it."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        store.download(manifest_key(avatar_id), directory / MANIFEST)
    except ObjectNotFound:
        raise ExportNotFound(f"avatar {avatar_id} has no exported renderer") from None
    manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    for name in manifest.get("files", {}):
        if only is not None and name not in only:
            continue
        if "/" in name or name.startswith("."):
            raise ExportNotFound(f"export of {avatar_id} names an unsafe file {name!r}")
        try:
            store.download(export_prefix(avatar_id) + name, directory / name)
        except ObjectNotFound:
            raise ExportNotFound(f"export of {avatar_id} lacks {name}") from None
    return manifest
