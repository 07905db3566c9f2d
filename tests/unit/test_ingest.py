"""Ingest checks on real files made here: each refusal has its stable code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from talkinghead.media import MediaError, ffmpeg_exe, probe, synth_test_video, synth_tone
from talkinghead.preprocess.ingest import IngestLimits, check_source, display_size, normalise

LIMITS = IngestLimits(min_duration_s=4.0, max_duration_s=8.0, min_side=256)


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def refusal(path: Path) -> str:
    with pytest.raises(MediaError) as info:
        check_source(probe(path), LIMITS)
    return info.value.code


def test_good_video_passes_and_is_normalised(tmp_path: Path) -> None:
    src = tmp_path / "src.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x256:rate=30:duration=5",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=5:sample_rate=44100",
        "-ac",
        "2",
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        str(src),
    )
    check_source(probe(src), LIMITS)
    info = normalise(src, tmp_path / "v.mp4", tmp_path / "a.wav")
    assert info.video is not None and info.audio is None
    assert info.video.fps == 25 and abs(info.video.frames - 125) <= 1
    audio = probe(tmp_path / "a.wav").audio
    assert audio is not None and (audio.sample_rate, audio.channels) == (16000, 1)


def test_rotation_is_applied(tmp_path: Path) -> None:
    plain = synth_test_video(tmp_path / "plain.mp4", seconds=4.5, size=320)
    wide = tmp_path / "wide.mp4"
    ffmpeg("-i", str(plain), "-vf", "crop=320:256:0:0", "-c:a", "copy", str(wide))
    src = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(wide), "-c", "copy", str(src))
    info = probe(src)
    assert info.video is not None and abs(info.video.rotation) == 90
    assert display_size(info) == (256, 320)
    out = normalise(src, tmp_path / "v.mp4", tmp_path / "a.wav")
    assert out.video is not None and (out.video.width, out.video.height) == (256, 320)


def test_truncated_file_is_unreadable(tmp_path: Path) -> None:
    src = synth_test_video(tmp_path / "full.mp4", seconds=5, size=256)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(MediaError) as info:
        probe(cut)
    assert info.value.code == "unreadable_media"


def test_audio_only_has_no_video_stream(tmp_path: Path) -> None:
    assert refusal(synth_tone(tmp_path / "a.wav", seconds=5)) == "no_video_stream"


def test_silent_video_has_no_audio_stream(tmp_path: Path) -> None:
    src = synth_test_video(tmp_path / "v.mp4", seconds=5, size=256, audio=False)
    assert refusal(src) == "no_audio_stream"


def test_two_second_clip_is_too_short(tmp_path: Path) -> None:
    assert refusal(synth_test_video(tmp_path / "v.mp4", seconds=2, size=256)) == "too_short"


def test_long_clip_is_too_long(tmp_path: Path) -> None:
    assert refusal(synth_test_video(tmp_path / "v.mp4", seconds=9, size=256)) == "too_long"


def test_small_frames_are_too_low_resolution(tmp_path: Path) -> None:
    src = synth_test_video(tmp_path / "v.mp4", seconds=5, size=128)
    assert refusal(src) == "resolution_too_low"
