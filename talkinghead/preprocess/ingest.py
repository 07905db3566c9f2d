"""Ingest: refuse what cannot become an avatar, then normalise to 25 fps video and 16 kHz audio."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from talkinghead.media import MediaError, MediaInfo, ffmpeg_exe, probe

FPS = 25
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class IngestLimits:
    """What a source video must satisfy (RAD-NeRF wants minutes; the tiny presets less)."""

    min_duration_s: float = 4.0
    max_duration_s: float = 600.0
    min_side: int = 256


def display_size(info: MediaInfo) -> tuple[int, int]:
    """Width and height as shown, with rotation metadata applied."""
    assert info.video is not None
    w, h = info.video.width, info.video.height
    return (h, w) if abs(info.video.rotation) % 180 == 90 else (w, h)


def check_source(info: MediaInfo, limits: IngestLimits) -> None:
    """Raise MediaError with a stable code for a video that cannot become an avatar."""
    if info.video is None or info.video.frames <= 0:
        raise MediaError("no_video_stream", "the file has no video stream")
    if info.audio is None:
        raise MediaError("no_audio_stream", "the video has no audio track (speech is needed)")
    if info.duration_s < limits.min_duration_s:
        raise MediaError(
            "too_short",
            f"the video lasts {info.duration_s:.1f} s; at least {limits.min_duration_s:.0f} s"
            " are needed",
        )
    if info.duration_s > limits.max_duration_s:
        raise MediaError(
            "too_long",
            f"the video lasts {info.duration_s:.0f} s; at most {limits.max_duration_s:.0f} s"
            " are accepted",
        )
    w, h = display_size(info)
    if min(w, h) < limits.min_side:
        raise MediaError(
            "resolution_too_low",
            f"the video is {w}x{h}; its shorter side must be at least {limits.min_side} px",
        )


def normalise(src: Path, video_out: Path, audio_out: Path) -> MediaInfo:
    """Re-encode to 25 fps H.264 (rotation applied) and 16 kHz mono WAV; returns the probe."""
    source = ffmpeg.input(str(src))
    # ffmpeg applies rotation metadata itself when it re-encodes (autorotate is the default).
    video = (
        source.video.filter("fps", fps=FPS)
        .filter("scale", "trunc(iw/2)*2", "trunc(ih/2)*2")
        .output(
            str(video_out),
            vcodec="libx264",
            pix_fmt="yuv420p",
            crf=16,
            preset="veryfast",
            an=None,
            movflags="+faststart",
        )
    )
    audio = source.audio.output(str(audio_out), ac=1, ar=SAMPLE_RATE, acodec="pcm_s16le")
    for job in (video, audio):
        args = (
            job.overwrite_output()
            .global_args("-nostdin", "-loglevel", "error")
            .compile(cmd=ffmpeg_exe())
        )
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MediaError("unreadable_media", proc.stderr.strip()[-400:] or "ffmpeg failed")
    return probe(video_out)
