"""Session-wide fixtures: real Redis, PostgreSQL and media made on the fly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from talkinghead.media import synth_face_video, synth_test_video, synth_tone
from tests.fixtures.servers import postgres_database, redis_server

# Tests that stop servers for seconds or build container images: `make test-system` runs
# them, `make test` deselects the `system` marker.
SYSTEM_DIRS = tuple(Path(__file__).resolve().parent / name for name in ("chaos", "images"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under SYSTEM_DIRS `system`."""
    for item in items:
        if any(d in Path(str(item.fspath)).resolve().parents for d in SYSTEM_DIRS):
            item.add_marker(pytest.mark.system)


pytest_plugins = [
    "tests.fixtures.seaweed",
    "tests.fixtures.avatars",
    "tests.fixtures.corpora",
]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private Redis server for the test session."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test session."""
    with postgres_database() as url:
        yield url


def make_video(path: Path, seconds: float = 2.0, size: int = 96, audio: bool = True) -> Path:
    """A small H.264/AAC mp4 made with ffmpeg's test sources."""
    return synth_test_video(path, seconds, size, audio)


def make_audio(path: Path, seconds: float = 1.0) -> Path:
    """A short sine tone as WAV."""
    return synth_tone(path, seconds)


FACE_SECONDS = 4.4  # just over the 4 s minimum: 110 frames at 25 fps


def make_face_video(path: Path, seconds: float = FACE_SECONDS, size: int = 256) -> Path:
    """A real face (scikit-image's astronaut photo) gently rocking, with a tone as audio."""
    return synth_face_video(path, seconds, size)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of small media files shared by the session."""
    d = tmp_path_factory.mktemp("media")
    make_video(d / "small.mp4")
    make_audio(d / "speech.wav")
    return d
