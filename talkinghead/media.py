"""Media I/O: probe, decode frames, encode video with ffmpeg (system or imageio-ffmpeg wheel)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


class MediaError(Exception):
    """Media that cannot be used; `code` is the stable error code for the job."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VideoInfo:
    """The first video stream."""

    codec: str
    width: int
    height: int
    fps: float
    frames: int
    rotation: int


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream."""

    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class MediaInfo:
    """What a probe found in a container."""

    container: str
    duration_s: float
    video: VideoInfo | None
    audio: AudioInfo | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def ffmpeg_exe() -> str:
    """The ffmpeg binary: the system one if installed, else the wheel's static build."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _first_frame_rotation(container: Any, stream: Any) -> int:
    """Display rotation in degrees (PyAV exposes the display matrix on decoded frames)."""
    try:
        frame = next(container.decode(stream), None)
    except Exception:  # undecodable first frame: the stage that decodes will say so
        return 0
    rotation = round(float(getattr(frame, "rotation", 0) or 0)) if frame is not None else 0
    container.seek(0)
    return int(rotation)


def probe(path: Path) -> MediaInfo:
    """Read container and stream facts; raises MediaError('unreadable_media') when it cannot."""
    import av

    try:
        with av.open(str(path)) as container:
            duration = float(container.duration / 1_000_000) if container.duration else 0.0
            video = audio = None
            if container.streams.video:
                vs = container.streams.video[0]
                rate = vs.average_rate or vs.guessed_rate or Fraction(0)
                fps = float(rate) if rate else 0.0
                stream_dur = (
                    float(vs.duration * vs.time_base) if vs.duration and vs.time_base else 0.0
                )
                duration = duration or stream_dur
                frames = int(vs.frames) or round(duration * fps)
                rotation = _first_frame_rotation(container, vs)
                video = VideoInfo(
                    vs.codec_context.name,
                    vs.codec_context.width,
                    vs.codec_context.height,
                    fps,
                    frames,
                    rotation,
                )
            if container.streams.audio:
                aus = container.streams.audio[0]
                audio = AudioInfo(
                    aus.codec_context.name,
                    int(aus.codec_context.sample_rate or 0),
                    int(aus.codec_context.channels or 0),
                )
            return MediaInfo(container.format.name, duration, video, audio)
    except av.FFmpegError as exc:
        raise MediaError("unreadable_media", f"cannot read the file: {exc}") from exc


def iter_frames(
    path: Path, max_side: int, start: int = 0, count: int | None = None
) -> Iterator[np.ndarray]:
    """Decode RGB frames [start, start+count) scaled so the longer side is at most `max_side`."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, max_side / max(w, h))
        tw, th = max(2, round(w * scale) // 2 * 2), max(2, round(h * scale) // 2 * 2)
        for index, frame in enumerate(container.decode(stream)):
            if index < start:
                continue
            if count is not None and index >= start + count:
                break
            yield frame.to_ndarray(format="rgb24", width=tw, height=th)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG."""
    import av

    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height = rgb.shape[1], rgb.shape[0]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def encode_still_with_audio(
    image: Path, audio: Path, out: Path, fps: int = 25, metadata: dict[str, str] | None = None
) -> None:
    """Encode one image held for the audio's duration: H.264 yuv420p + AAC mp4."""
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-loop",
        "1",
        "-framerate",
        str(fps),
        "-i",
        str(image),
        "-i",
        str(audio),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-vf",
        "scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "stillimage",
        "-r",
        str(fps),
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-shortest",
        "-movflags",
        "+faststart",
    ]
    for key, value in (metadata or {}).items():
        cmd += ["-metadata", f"{key}={value}"]
    cmd.append(str(out))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MediaError("encode_failed", proc.stderr.strip()[-500:] or "ffmpeg failed")


def run_ffmpeg(args: list[str]) -> None:
    """Run ffmpeg quietly; raises MediaError with its stderr on failure."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MediaError("encode_failed", proc.stderr.strip()[-500:] or "ffmpeg failed")


def synth_test_video(out: Path, seconds: float = 2.0, size: int = 96, audio: bool = True) -> Path:
    """A small H.264/AAC mp4 from ffmpeg's test pattern and a tone (no downloads)."""
    args = ["-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
    run_ffmpeg([*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest", str(out)])
    return out


def synth_tone(out: Path, seconds: float = 1.0, frequency: int = 220) -> Path:
    """A 16 kHz sine tone as WAV."""
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={frequency}:duration={seconds}",
            "-ar",
            "16000",
            str(out),
        ]
    )
    return out


def synth_face_video(out: Path, seconds: float = 4.4, size: int = 256) -> Path:
    """A real face (scikit-image's astronaut photo) gently rocking, with a tone as audio."""
    from skimage import data

    still = out.with_suffix(".png")
    write_png(still, data.astronaut())
    run_ffmpeg([
        "-loop", "1", "-i", str(still), "-f", "lavfi", "-i",
        f"sine=frequency=300:duration={seconds}",
        "-vf", f"scale={size}:{size},rotate=0.06*sin(2*PI*t/3)", "-t", str(seconds), "-r", "25",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out),
    ])  # fmt: skip
    still.unlink()
    return out
