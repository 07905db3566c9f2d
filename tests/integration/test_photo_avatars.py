"""Photo avatars through the API and a real ingest worker: every refusal has its code."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data
from sqlalchemy import select

from services.api.app import create_app
from services.client import TalkingHeadClient, source_kind
from shared.config import Settings
from shared.db.models import Artifact, Avatar, Job
from shared.db.session import session_scope
from shared.tenants import create_tenant
from talkinghead.families import registry
from talkinghead.families.contract import (
    IMAGE_STAGES,
    AvatarSource,
    InputSpec,
    PresetSpec,
    RenderControls,
    TrainingRun,
    TrainOptions,
)
from talkinghead.media import synth_test_video
from tests.fixtures.workers import start_worker, stop
from tests.unit.conftest import multipart_body
from tests.unit.test_api_auth import assert_problem
from tests.unit.test_photo import landscape, two_people

PHOTO_FAMILY = "photo-test"
PIXEL_LIMIT = 1_000_000
BYTE_LIMIT = 1024 * 1024


class PhotoTestFamily:
    """The least a photo family declares for the API and ingest; its later stages never run."""

    name = PHOTO_FAMILY
    description = "a test family that makes avatars from a photo"
    sources = frozenset({"image"})
    stages: tuple[str, ...] = IMAGE_STAGES
    presets: Mapping[str, PresetSpec] = {"photo": PresetSpec("photo", 256, "test preset")}
    default_preset = "photo"
    inputs: tuple[InputSpec, ...] = ()
    reads = frozenset({"image"})

    def config(self, preset: str) -> dict[str, Any]:
        """The preset as config."""
        return {"preset": preset}

    def open_training(
        self, source: AvatarSource, workdir: Path, config: dict[str, Any], options: TrainOptions
    ) -> TrainingRun:
        """Photo families do not train."""
        raise NotImplementedError

    def prepare(
        self, source: AvatarSource, out_dir: Path, config: dict[str, Any]
    ) -> dict[str, Any]:
        """Not reached: the worker in this test serves the ingest queue only."""
        raise NotImplementedError

    def export(
        self,
        source: AvatarSource,
        run: TrainingRun | None,
        out_dir: Path,
        config: dict[str, Any],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        """Not reached."""
        raise NotImplementedError

    def conditions(
        self,
        export_dir: Path,
        manifest: Mapping[str, Any],
        speech: np.ndarray,
        controls: RenderControls,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Not reached."""
        raise NotImplementedError


@pytest.fixture
def photo_family() -> Iterator[str]:
    """The test family, registered in this process (the API's) for the test's duration."""
    registry.register(PhotoTestFamily())
    try:
        yield PHOTO_FAMILY
    finally:
        registry.reload()


@dataclass
class Platform:
    """An in-process API on a real Redis, and how to start an ingest worker beside it."""

    client: TestClient
    settings: Settings
    headers: dict[str, str]
    env: dict[str, str]
    scratch: Path

    def post(self, files: dict[str, tuple[str, bytes, str]], **fields: str) -> Any:
        """A multipart `POST /v1/avatars` (the text fields come before the file)."""
        return self.client.post(
            "/v1/avatars",
            headers=self.headers,
            files=files,
            data={"consent": "true", **fields},
        )

    def post_raw(self, parts: list[tuple[str, bytes, str | None]]) -> Any:
        """A multipart `POST /v1/avatars` with its parts in exactly this order."""
        headers = {**self.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
        return self.client.post("/v1/avatars", headers=headers, content=multipart_body(parts))

    def objects(self) -> list[str]:
        """Every object in the local store."""
        root = self.settings.local_storage_dir
        return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def avatar_count(self) -> int:
        """Avatar rows."""
        with session_scope(self.settings.database_url) as s:
            return len(s.scalars(select(Avatar.id)).all())


@pytest.fixture
def platform(redis_url: str, tmp_path: Path) -> Iterator[Platform]:
    """The API with low photo limits, so that small test files cross them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    data_dir = tmp_path / "data"
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        redis_url=redis_url,
        public_base_url="http://testserver",
        max_image_pixels=PIXEL_LIMIT,
        max_image_bytes=BYTE_LIMIT,
    )
    env = {
        "TH_DATA_DIR": str(data_dir),
        "TH_REDIS_URL": redis_url,
        "TH_MAX_IMAGE_PIXELS": str(PIXEL_LIMIT),
        "TH_MAX_IMAGE_BYTES": str(BYTE_LIMIT),
        "TH_LOG_JSON": "false",
        "TMPDIR": str(scratch),
    }
    app = create_app(settings)
    with session_scope(settings.database_url) as s:
        key = create_tenant(s, "photos")[1]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Platform(client, settings, {"Authorization": f"Bearer {key}"}, env, scratch)


def encode(rgb: np.ndarray, fmt: str, **options: Any) -> bytes:
    """An array encoded by Pillow."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **options)
    return buf.getvalue()


def rotated_jpeg(upright: np.ndarray) -> bytes:
    """A phone photo: pixels stored turned a quarter, EXIF orientation 6 saying so."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def image_part(content: bytes, name: str = "photo.jpg") -> dict[str, tuple[str, bytes, str]]:
    """`files=` with one `image` part."""
    return {"image": (name, content, "application/octet-stream")}


def video_only_family() -> str:
    """A registered family that makes avatars from videos only."""
    return next(name for name, f in registry.families().items() if "image" not in f.sources)


def test_refused_at_post(platform: Platform, photo_family: str, tmp_path: Path) -> None:
    photo = encode(data.astronaut(), "JPEG")
    video = synth_test_video(tmp_path / "v.mp4", seconds=1, size=64).read_bytes()
    gif = encode(data.astronaut(), "GIF")
    p = platform
    # the format is checked by its signature, as for videos
    gif_as_jpg = p.post(image_part(gif, "a.jpg"), renderer=photo_family)
    assert_problem(gif_as_jpg, 415, "unsupported_media_type")
    assert_problem(p.post(image_part(b""), renderer=photo_family), 422, "empty_file")
    too_big = b"\x89PNG\r\n\x1a\n" + b"\0" * (BYTE_LIMIT + 10)
    assert_problem(p.post(image_part(too_big), renderer=photo_family), 413, "file_too_large")
    # exactly one source file
    both = {**image_part(photo), "video": ("v.mp4", video, "video/mp4")}
    assert_problem(p.post(both, renderer=photo_family), 422, "multiple_sources")
    no_file = p.post_raw([("consent", b"true", None), ("renderer", photo_family.encode(), None)])
    assert_problem(no_file, 422, "source_required")
    # a family that does not take the kind, named before or after the file (or the default)
    video_only = video_only_family()
    refused = p.post(image_part(photo), renderer=video_only)
    body = assert_problem(refused, 422, "unsupported_source")
    assert "video" in str(body["detail"])
    assert_problem(p.post(image_part(photo)), 422, "unsupported_source")
    late = p.post_raw(
        [
            ("consent", b"true", None),
            ("image", photo, "p.jpg"),
            ("renderer", video_only.encode(), None),
        ]
    )
    assert_problem(late, 422, "unsupported_source")
    video_to_photo_family = p.post({"video": ("v.mp4", video, "video/mp4")}, renderer=photo_family)
    assert "image" in str(
        assert_problem(video_to_photo_family, 422, "unsupported_source")["detail"]
    )
    # the same through an upload slot: its purpose is the source kind
    slot = p.client.post(
        "/v1/uploads", headers=p.headers, json={"purpose": "image", "size": 10**9}
    ).json()
    assert slot["max_bytes"] == BYTE_LIMIT
    put = p.client.put(f"/v1/uploads/{slot['upload_id']}", headers=p.headers, content=photo)
    assert put.status_code == 204
    json_body = {"upload_id": slot["upload_id"], "consent": True, "renderer": video_only}
    refused = p.client.post("/v1/avatars", headers=p.headers, json=json_body)
    assert_problem(refused, 422, "unsupported_source")
    assert p.avatar_count() == 0
    assert p.objects() == [slot["upload_id"]]  # the upload stays usable; nothing else was kept
    json_body["renderer"] = photo_family
    made = p.client.post("/v1/avatars", headers=p.headers, json=json_body)
    assert made.status_code == 202, made.text
    assert made.json()["source"] == "image" and made.json()["preset"] == "photo"


def test_photo_avatars_through_the_ingest_worker(
    platform: Platform, photo_family: str, tmp_path: Path
) -> None:
    p = platform
    astronaut = np.ascontiguousarray(data.astronaut())
    jpeg = encode(astronaut, "JPEG", quality=92)
    small = np.asarray(Image.fromarray(astronaut).resize((200, 200)))
    bad = {
        "unreadable_media": [
            jpeg[: len(jpeg) // 3],  # truncated
            b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(5000),  # a JPEG header, noise
        ],
        "image_too_large": [encode(np.zeros((1000, 1200, 3), np.uint8), "PNG")],
        "image_too_small": [encode(small, "JPEG")],
        "face_not_found": [encode(landscape(), "PNG")],
        "multiple_subjects": [encode(two_people(astronaut), "JPEG")],
    }
    expected: dict[str, str] = {}
    for code, contents in bad.items():
        for content in contents:
            made = p.post(image_part(content), renderer=photo_family)
            assert made.status_code == 202, made.text
            expected[made.json()["id"]] = code
    upright = np.ascontiguousarray(astronaut[:, 56:456])
    good = {
        "jpeg": p.post(image_part(jpeg), renderer=photo_family),
        "rotated": p.post(image_part(rotated_jpeg(upright)), renderer=photo_family),
        # the family is named after the file: the form is judged whole
        "webp": p.post_raw(
            [
                ("consent", b"true", None),
                ("image", encode(astronaut, "WEBP"), "w"),
                ("renderer", photo_family.encode(), None),
            ]
        ),
    }
    good_ids = {}
    for label, made in good.items():
        assert made.status_code == 202, made.text
        view = made.json()
        assert (view["source"], view["renderer"], view["status"]) == (
            "image",
            photo_family,
            "queued",
        )
        good_ids[label] = view["id"]

    worker = start_worker(p.env, tmp_path / "worker.log", queues="ingest", concurrency=2)
    try:
        deadline = time.monotonic() + 240
        jobs: dict[str, tuple[str, str | None]] = {}
        while time.monotonic() < deadline:
            with session_scope(p.settings.database_url) as s:
                jobs = {j.resource_id: (j.status, j.error_code) for j in s.scalars(select(Job))}
            if all(status not in ("queued", "ingesting") for status, _ in jobs.values()):
                break
            time.sleep(0.5)
    finally:
        stop(worker)
    assert {expected[a]: jobs[a] for a in expected} == {
        code: ("failed", code) for code in expected.values()
    }
    # the good photos passed ingest and wait for their family's next stage
    assert {label: jobs[a] for label, a in good_ids.items()} == {
        label: ("preparing", None) for label in good_ids
    }
    with session_scope(p.settings.database_url) as s:
        arts = {
            a.resource_id: (a.key, a.info)
            for a in s.scalars(select(Artifact).where(Artifact.kind == "image"))
        }
        rows = s.scalars(select(Avatar).where(Avatar.id.in_(good_ids.values()))).all()
        assert [row.source for row in rows] == ["image"] * len(good_ids)
    assert set(arts) == set(good_ids.values())  # refused photos stored nothing
    for label, avatar_id in good_ids.items():
        key, info = arts[avatar_id]
        with Image.open(p.settings.local_storage_dir / key) as png:
            assert png.format == "PNG" and png.mode == "RGB"
            size = png.size
            pixels = np.asarray(png).astype(int)
        if label == "rotated":  # shown upright: the EXIF orientation was applied
            assert size == (400, 512) and info["photo"]["orientation"] == 6
            assert np.abs(pixels - upright).mean() < 4
        else:
            assert size == (512, 512)
        x0, _, x1, y1 = info["photo"]["face_box"]
        assert y1 < size[1] / 2 and x1 - x0 > 60
    leftovers = [q.name for q in p.scratch.iterdir() if q.name.startswith("th-")]
    assert leftovers == [], "temporary files of ingest steps were left behind"


def test_client_sends_a_photo_as_the_image_part(tmp_path: Path) -> None:
    sent: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.read())
        return httpx.Response(202, json={"id": "av_1"})

    photo = tmp_path / "portrait.bin"  # the content decides, not the name
    photo.write_bytes(encode(data.astronaut(), "PNG"))
    video = synth_test_video(tmp_path / "v.mp4", seconds=1, size=64)
    assert (source_kind(photo), source_kind(video)) == ("image", "video")
    with TalkingHeadClient("http://api", "k", transport=httpx.MockTransport(answer)) as client:
        client.create_avatar(photo, consent=True, renderer=PHOTO_FAMILY)
        client.create_avatar(video, consent=True)
        client.create_avatar(photo, consent=True, source="video")  # said explicitly
    assert [b'name="image"' in body for body in sent] == [True, False, False]
    assert [b'name="video"' in body for body in sent] == [False, True, True]
