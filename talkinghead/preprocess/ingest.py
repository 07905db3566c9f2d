"""Ingest: refuse what cannot become an avatar, then normalise to 25 fps video and 16 kHz audio."""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ffmpeg
import numpy as np

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


def _video_output(src: Path) -> Any:
    """The 25 fps video stream of `src` (rotation applied by ffmpeg), before its outputs."""
    # ffmpeg applies rotation metadata itself when it re-encodes (autorotate is the default).
    return (
        ffmpeg.input(str(src))
        .video.filter("fps", fps=FPS)
        .filter("scale", "trunc(iw/2)*2", "trunc(ih/2)*2")
    )


def _mp4_output(stream: Any, video_out: Path) -> Any:
    """H.264 mp4 output of a video stream."""
    return stream.output(
        str(video_out),
        vcodec="libx264",
        pix_fmt="yuv420p",
        crf=16,
        preset="veryfast",
        an=None,
        movflags="+faststart",
    )


def _compile(job: Any) -> list[str]:
    """Command line of an ffmpeg-python job, quiet and overwriting."""
    args: list[str] = (
        job.overwrite_output()
        .global_args("-nostdin", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    return args


def _run(job: Any) -> None:
    """Run one ffmpeg job; raises MediaError('unreadable_media') when it fails."""
    proc = subprocess.run(_compile(job), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MediaError("unreadable_media", proc.stderr.strip()[-400:] or "ffmpeg failed")


def normalise_audio(src: Path, audio_out: Path) -> None:
    """Decode the first audio stream to 16 kHz mono 16-bit WAV (normalise's audio half)."""
    source = ffmpeg.input(str(src))
    _run(source.audio.output(str(audio_out), ac=1, ar=SAMPLE_RATE, acodec="pcm_s16le"))


def normalise(src: Path, video_out: Path, audio_out: Path) -> MediaInfo:
    """Re-encode to 25 fps H.264 (rotation applied) and 16 kHz mono WAV; returns the probe."""
    _run(_mp4_output(_video_output(src), video_out))
    normalise_audio(src, audio_out)
    return probe(video_out)


def normalised_size(info: MediaInfo, max_side: int) -> tuple[int, int]:
    """Width and height of `normalise`'s frames as decoded with the longer side <= max_side."""
    w, h = display_size(info)
    w, h = w // 2 * 2, h // 2 * 2
    scale = min(1.0, max_side / max(w, h))
    return max(2, round(w * scale) // 2 * 2), max(2, round(h * scale) // 2 * 2)


def normalised_frames(
    src: Path, size: tuple[int, int], start: int = 0, count: int | None = None
) -> Iterator[np.ndarray]:
    """Frames [start, start+count) of `normalise`'s video, straight from the source: no encode.

    The same ffmpeg filters (25 fps, rotation, even size), then scaled to `size` (w, h) as
    `normalised_size` says, piped as raw RGB uint8 (h, w, 3). Where the normalised file is only
    an intermediate, decoding the source again is much cheaper than encoding it with x264 and
    decoding that, and it skips a generation of compression. Raises
    MediaError('unreadable_media') if ffmpeg fails.
    """
    width, height = size
    stream = _video_output(src)
    if start > 0 or count is not None:
        trim = {"start_frame": start} | ({} if count is None else {"end_frame": start + count})
        stream = stream.filter("trim", **trim).filter("setpts", "PTS-STARTPTS")
    stream = stream.filter("scale", width, height, flags="bilinear")
    job = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
    with tempfile.TemporaryFile() as log:  # not a pipe: a full, unread one would stall ffmpeg
        proc = subprocess.Popen(_compile(job), stdout=subprocess.PIPE, stderr=log, bufsize=0)
        assert proc.stdout is not None
        pipe = cast(io.RawIOBase, proc.stdout)  # bufsize=0: a raw pipe with readinto
        nbytes = width * height * 3
        try:
            while True:
                buf = bytearray(nbytes)
                view, got = memoryview(buf), 0
                while got < nbytes:
                    n = pipe.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got < nbytes:
                    break
                yield np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
            if proc.wait() != 0:
                log.seek(0)
                err = log.read().decode("utf-8", "replace").strip()
                raise MediaError("unreadable_media", err[-400:] or "ffmpeg failed")
        finally:
            if proc.poll() is None:  # the consumer stopped early
                proc.kill()
            proc.wait()
            proc.stdout.close()
