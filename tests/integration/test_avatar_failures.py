"""Every ingest/preprocess failure code from a real file, through a real worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.config import Settings
from shared.db.migrate import upgrade
from shared.db.models import Job
from shared.db.session import session_scope
from shared.jobs import JobService
from shared.queue import celery_app, configure_celery
from shared.tenants import create_tenant
from talkinghead.media import run_ffmpeg, synth_test_video, synth_tone
from tests.conftest import make_face_video
from tests.fixtures.workers import start_reconciler, start_worker, stop
from tests.integration.test_crash_safety import commit_avatar


def bad_inputs(d: Path) -> dict[str, Path]:
    """One real file per failure code."""
    full = synth_test_video(d / "full.mp4", seconds=5, size=256)
    truncated = d / "truncated.mp4"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    person = make_face_video(d / "person.mp4", seconds=2.5)
    other = d / "other.mp4"  # a different-looking person: mirrored, recoloured, new background
    run_ffmpeg(
        [
            "-i",
            str(person),
            "-vf",
            "hflip,hue=h=140:s=1.6,eq=brightness=0.08",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "copy",
            str(other),
        ]
    )
    mixed = d / "two-people.mp4"
    run_ffmpeg(
        [
            "-i",
            str(person),
            "-i",
            str(other),
            "-filter_complex",
            "[0:v][0:a][1:v][1:a]concat=n=2:v=1:a=1[v][a]",
            "-map",
            "[v]",
            "-map",
            "[a]",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(mixed),
        ]
    )
    return {
        "unreadable_media": truncated,
        "no_video_stream": synth_tone(d / "speech.wav", seconds=5),
        "no_audio_stream": synth_test_video(d / "silent.mp4", seconds=5, size=256, audio=False),
        "too_short": make_face_video(d / "short.mp4", seconds=2.0),
        "too_long": make_face_video(d / "long.mp4", seconds=7.0),
        "resolution_too_low": make_face_video(d / "small.mp4", size=128),
        "face_not_found": full,
        "multiple_subjects": mixed,
    }


def test_each_bad_video_fails_with_its_code(redis_url: str, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        "TH_DATA_DIR": str(tmp_path / "data"),
        "TH_REDIS_URL": redis_url,
        "TH_MAX_VIDEO_S": "6",
        "TH_LOG_JSON": "false",
        "TMPDIR": str(scratch),
    }
    settings = Settings(data_dir=tmp_path / "data", redis_url=redis_url, max_video_s=6)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as s:
        tenant_id = create_tenant(s, "failures")[0].id
    configure_celery(settings)
    jobs = JobService(settings, celery_app)
    expected: dict[str, str] = {}
    for code, path in bad_inputs(tmp_path).items():
        _, job_id = commit_avatar(settings, tenant_id, path, "")
        jobs.dispatch(job_id)
        expected[job_id] = code
    worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
    reconciler = start_reconciler(env, tmp_path / "reconciler.log")
    try:
        deadline = time.monotonic() + 240
        got: dict[str, tuple[str, str | None]] = {}
        while time.monotonic() < deadline:
            with session_scope(settings.database_url) as s:
                got = {j.id: (j.status, j.error_code) for j in s.query(Job).all()}
            if all(status in ("failed", "ready") for status, _ in got.values()):
                break
            time.sleep(0.5)
    finally:
        stop(worker)
        stop(reconciler)
    assert {expected[j]: v for j, v in got.items()} == {
        code: ("failed", code) for code in expected.values()
    }
    leftovers = [p.name for p in scratch.iterdir() if p.name.startswith("th-")]
    assert leftovers == [], "temporary files of failed jobs were left behind"


@pytest.mark.parametrize("code", ["face_not_found", "multiple_subjects"])
def test_preprocess_refusals_in_the_library(code: str, tmp_path: Path) -> None:
    from talkinghead.media import MediaError
    from talkinghead.preprocess.pipeline import preprocess_video

    with pytest.raises(MediaError) as info:
        preprocess_video(bad_inputs(tmp_path)[code], tmp_path / "ds")
    assert info.value.code == code
    assert not (tmp_path / "ds" / "manifest.json").exists()
