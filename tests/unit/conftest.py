"""Fixtures for the API tests: an embedded-mode app on SQLite, a local store and media files."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from services.api.app import create_app
from shared.config import Settings
from shared.db.models import (
    Avatar,
    IdempotencyRecord,
    Job,
    Render,
    Upload,
    utcnow,
)
from shared.db.session import session_scope
from shared.tenants import create_tenant


@dataclass(frozen=True)
class Media:
    """Small valid media files made once per session."""

    video: bytes
    audio: bytes
    image: bytes


def _ffmpeg(out: Path, *args: str) -> bytes:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run([*cmd, str(out)], check=True, timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    """A 1 s 64x64 H.264+AAC mp4, a 1 s wav and an 8x8 png."""
    root = tmp_path_factory.mktemp("media")
    lavfi = ("-f", "lavfi", "-i")
    video = _ffmpeg(
        root / "v.mp4",
        *lavfi, "testsrc=size=64x64:rate=25", *lavfi, "sine=frequency=440",
        "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
    )  # fmt: skip
    audio = _ffmpeg(root / "a.wav", *lavfi, "sine=frequency=440", "-t", "1")
    image = _ffmpeg(root / "i.png", *lavfi, "color=c=red:s=8x8", "-frames:v", "1")
    return Media(video=video, audio=audio, image=image)


@dataclass
class Api:
    """A running app, its client and two tenants."""

    client: TestClient
    settings: Settings
    tenant_id: str
    key: str
    other_tenant_id: str
    other_key: str

    @property
    def headers(self) -> dict[str, str]:
        """Auth headers of the main tenant."""
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def other_headers(self) -> dict[str, str]:
        """Auth headers of the other tenant."""
        return {"Authorization": f"Bearer {self.other_key}"}

    @property
    def store_dir(self) -> Path:
        """Root of the local object store."""
        return self.settings.local_storage_dir

    def objects(self) -> list[str]:
        """Every object key in the store (temp files included, so leaks show)."""
        if not self.store_dir.exists():
            return []
        return sorted(
            p.relative_to(self.store_dir).as_posix()
            for p in self.store_dir.rglob("*")
            if p.is_file()
        )

    def counts(self) -> dict[str, int]:
        """Rows per table that creation requests write."""
        with session_scope(self.settings.database_url) as s:
            return {
                model.__tablename__: s.scalar(select(func.count()).select_from(model)) or 0
                for model in (Avatar, Job, Render, IdempotencyRecord)
            }

    def assert_nothing_left(self, baseline_objects: list[str] | None = None) -> None:
        """No avatar, render, job or idempotency row, and no new object in the store."""
        assert self.counts() == {"avatars": 0, "jobs": 0, "renders": 0, "idempotency_records": 0}
        assert self.objects() == (baseline_objects or [])

    def set_job(self, resource_id: str, **values: Any) -> None:
        """Move a job directly (as a worker would), bumping its version."""
        with session_scope(self.settings.database_url) as s:
            s.execute(
                update(Job)
                .where(Job.resource_id == resource_id)
                .values(updated_at=utcnow(), version=Job.version + 1, **values)
            )

    def upload_row(self, upload_id: str) -> Upload:
        """An upload row."""
        with session_scope(self.settings.database_url) as s:
            row = s.get(Upload, upload_id)
            assert row is not None
            s.expunge(row)
            return row


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[ApiFactory]:
    """Build an app with settings overrides; clients are closed afterwards."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Api:
        data_dir = tmp_path / f"data{len(clients)}"
        base: dict[str, Any] = {
            "data_dir": data_dir,
            "database_url": "",
            "redis_url": "",
            "storage_backend": "local",
            "storage_dir": None,
            "public_base_url": "http://testserver",
        }
        settings = Settings(_env_file=None, **{**base, **overrides})
        app = create_app(settings)
        with session_scope(settings.database_url) as s:
            tenant, key = create_tenant(s, "acme")
            other, other_key = create_tenant(s, "globex")
            ids = (tenant.id, other.id)
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return Api(client, settings, ids[0], key, ids[1], other_key)

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    """An app with default settings."""
    return make_api()


def video_form(media: Media, *, video: bytes | None = None, **fields: str) -> dict[str, Any]:
    """`files=` and `data=` for a multipart avatar request (consent true unless overridden)."""
    data = {"consent": "true", **fields}
    return {
        "files": {"video": ("face.mp4", media.video if video is None else video, "video/mp4")},
        "data": data,
    }


def multipart_body(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> bytes:
    """A hand-built multipart body in the given part order: (name, value, filename)."""
    out = bytearray()
    for name, value, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)
