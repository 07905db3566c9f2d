"""Media I/O: probe, decode frames, encode video with ffmpeg (system or imageio-ffmpeg wheel)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any

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


# --- shared ffmpeg argument pieces ---------------------------------------------------------------

X264_PRESET = "veryfast"  # renders are short; encode speed matters more than a few % of size
AAC_BITRATE = "128k"
# Keys the mp4 muxer writes as iTunes-style tags; any other key is silently dropped by it unless
# `use_metadata_tags` is set, which stores all tags as QuickTime `mdta` keys instead.
_MP4_NATIVE_TAGS = frozenset(
    {"title", "artist", "album_artist", "album", "composer", "comment", "date", "description",
     "genre", "copyright", "grouping", "lyrics", "synopsis"}
)  # fmt: skip


def _ffmpeg_cmd(*args: str) -> list[str]:
    """An ffmpeg command line that never reads the terminal and only logs errors."""
    return [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]


FFMPEG_THREADS_ENV = "TH_FFMPEG_THREADS"


def _x264_args(fps: int, crf: int | None = None, tune: str | None = None) -> list[str]:
    """H.264 in yuv420p (the chroma layout every browser and phone plays) at a constant fps."""
    args = ["-c:v", "libx264", "-preset", X264_PRESET, "-pix_fmt", "yuv420p"]
    # The worker's thread budget (talkinghead.devices.thread_budget); x264 would otherwise
    # start 1.5 threads per core in each of the pool's concurrent encodes.
    threads = os.environ.get(FFMPEG_THREADS_ENV, "")
    args += ["-threads", threads] if threads.isdigit() and int(threads) > 0 else []
    args += ["-crf", str(crf)] if crf is not None else []
    args += ["-tune", tune] if tune else []
    return [*args, "-r", str(fps)]


def _aac_args(sample_rate: int | None = None) -> list[str]:
    """AAC audio at a fixed bitrate, optionally resampled."""
    return ["-c:a", "aac", "-b:a", AAC_BITRATE, *(["-ar", str(sample_rate)] if sample_rate else [])]


def _mp4_args(metadata: dict[str, str] | None) -> list[str]:
    """Faststart mp4 (playable while downloading) carrying `metadata` as container tags."""
    tags = metadata or {}
    flags = "+faststart" + ("" if set(tags) <= _MP4_NATIVE_TAGS else "+use_metadata_tags")
    args = ["-movflags", flags]
    for key, value in tags.items():
        args += ["-metadata", f"{key}={value}"]
    return [*args, "-f", "mp4"]


def _stderr_tail(text: str, limit: int = 500) -> str:
    """The end of ffmpeg's stderr, where the actual error is."""
    return text.strip()[-limit:] or "ffmpeg failed"


def encode_still_with_audio(
    image: Path, audio: Path, out: Path, fps: int = 25, metadata: dict[str, str] | None = None
) -> None:
    """Encode one image held for the audio's duration: H.264 yuv420p + AAC mp4."""
    cmd = _ffmpeg_cmd(
        "-loop", "1", "-framerate", str(fps), "-i", str(image), "-i", str(audio),
        "-map", "0:v:0", "-map", "1:a:0",
        "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p",
        *_x264_args(fps, tune="stillimage"), *_aac_args(), "-shortest", *_mp4_args(metadata),
        str(out),
    )  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MediaError("encode_failed", _stderr_tail(proc.stderr))


def run_ffmpeg(args: list[str]) -> None:
    """Run ffmpeg quietly; raises MediaError with its stderr on failure."""
    proc = subprocess.run(_ffmpeg_cmd(*args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MediaError("encode_failed", _stderr_tail(proc.stderr))


# --- speech input ---------------------------------------------------------------------------------

SPEECH_RATE = 16000  # what the audio feature extractors expect
# Silence thresholds, on the DC-removed 16 kHz mono signal. Measured: espeak-ng speech turned down
# by 30 dB peaks at -32 dBFS with its loudest 200 ms window at -47 dBFS; Gaussian white noise at
# -70 dBFS RMS peaks at -57 dBFS with a loudest window at -70 dBFS. Each test thus keeps >= 7 dB
# between the quiet speech it must pass and the faint noise it must refuse.
SILENCE_PEAK_DBFS = -50.0  # a file whose loudest sample is below this holds no usable speech
SILENCE_ACTIVE_DBFS = -60.0  # ... nor one whose loudest 200 ms window has an RMS below this
# The loudest window, not the whole-file RMS: long leading/trailing silence around quiet speech
# would drag a whole-file RMS under the threshold and refuse a perfectly usable take.
ACTIVE_WINDOW_S = 0.2
# The container's duration is checked before decoding (no point decoding an hour-long upload);
# it is an estimate for some formats (mp3 without a Xing header), so allow this much over there
# and apply the exact limit to the decoded samples.
PROBE_DURATION_SLACK_S = 0.5


@dataclass(frozen=True, eq=False)
class SpeechAudio:
    """Speech decoded to 16 kHz mono: the WAV written, its samples and where it came from."""

    wav: Path
    wave: np.ndarray  # float32 in [-1, 1] at SPEECH_RATE
    duration_s: float
    source: AudioInfo
    peak_dbfs: float = 0.0
    active_dbfs: float = 0.0


def _dbfs(value: float) -> float:
    """Level in dB relative to full scale (floored at -200 for digital silence)."""
    return 20.0 * math.log10(max(value, 1e-10))


def speech_levels(wave_: np.ndarray, rate: int = SPEECH_RATE) -> tuple[float, float]:
    """(peak dBFS, RMS dBFS of the loudest ACTIVE_WINDOW_S window) of a mono float signal."""
    if wave_.size == 0:
        return _dbfs(0.0), _dbfs(0.0)
    x = wave_.astype(np.float64) - float(wave_.mean())  # a DC offset is not sound
    window = max(1, min(x.size, round(ACTIVE_WINDOW_S * rate)))
    energy = np.concatenate([[0.0], np.cumsum(x * x)])
    loudest = float((energy[window:] - energy[:-window]).max()) / window
    return _dbfs(float(np.abs(x).max())), _dbfs(math.sqrt(max(loudest, 0.0)))


def _probe_audio(path: Path) -> tuple[AudioInfo | None, float]:
    """The first audio stream's facts and its stated duration (0 when the container has none)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None, 0.0
            stream = container.streams.audio[0]
            info = AudioInfo(
                stream.codec_context.codec.canonical_name,  # "mp3", not the decoder "mp3float"
                int(stream.codec_context.sample_rate or 0),
                int(stream.codec_context.channels or 0),
            )
            if stream.duration and stream.time_base:
                return info, float(stream.duration * stream.time_base)
            return info, float(container.duration / 1_000_000) if container.duration else 0.0
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("unreadable_media", f"cannot read the audio file: {exc}") from exc


def _read_wav_s16(path: Path) -> np.ndarray:
    """Samples of a mono 16-bit PCM WAV as float32 in [-1, 1]."""
    with wave.open(str(path), "rb") as wav:
        raw = wav.readframes(wav.getnframes())
    return (np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


def _decode_speech(
    path: Path, part: Path, max_seconds: float, min_seconds: float
) -> tuple[AudioInfo, np.ndarray, float, float]:
    """Probe, decode to `part` and check; returns (source, samples, peak dBFS, active dBFS)."""
    source, stated = _probe_audio(path)
    if source is None:
        raise MediaError("no_audio_stream", "the file has no audio track")
    if stated > max_seconds + PROBE_DURATION_SLACK_S:
        raise MediaError(
            "too_long", f"the audio lasts {stated:.1f} s; the limit is {max_seconds:g} s"
        )
    # `-t` bounds the decode even when the container states no duration (raw streams); a little
    # over the limit so that the exact check below sees the overflow. Decoding is lenient: a
    # damaged frame mid-file is skipped rather than failing the whole upload.
    cmd = _ffmpeg_cmd(
        "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-ac", "1", "-ar", str(SPEECH_RATE), "-c:a", "pcm_s16le",
        "-t", f"{max_seconds + PROBE_DURATION_SLACK_S:.3f}", "-f", "wav", str(part),
    )  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not part.exists():
        raise MediaError(
            "unreadable_media", f"cannot decode the audio: {_stderr_tail(proc.stderr)}"
        )
    samples = _read_wav_s16(part)
    if samples.size == 0:
        raise MediaError("unreadable_media", "no audio could be decoded from the file")
    duration = samples.size / SPEECH_RATE
    if duration > max_seconds:
        raise MediaError("too_long", f"the audio lasts over {max_seconds:g} s, which is the limit")
    if duration < min_seconds:
        raise MediaError(
            "too_short", f"the audio lasts {duration:.2f} s; it needs at least {min_seconds:g} s"
        )
    peak, active = speech_levels(samples)
    if peak < SILENCE_PEAK_DBFS or active < SILENCE_ACTIVE_DBFS:
        raise MediaError(
            "silent_audio",
            f"the audio is silent or too faint (peak {peak:.0f} dBFS, loudest "
            f"{ACTIVE_WINDOW_S:g} s at {active:.0f} dBFS)",
        )
    return source, samples, peak, active


def load_speech(
    path: Path, out_wav: Path, max_seconds: float, min_seconds: float = 0.2
) -> SpeechAudio:
    """Decode any common audio (or a video's audio) to a 16 kHz mono s16 WAV and check it."""
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    part = out_wav.with_name(f".{out_wav.name}.part")
    try:
        source, samples, peak, active = _decode_speech(path, part, max_seconds, min_seconds)
        os.replace(part, out_wav)  # out_wav only ever holds a checked result
    except BaseException:
        part.unlink(missing_ok=True)
        if out_wav.resolve() != path.resolve():  # a stale result must not pass for this one
            out_wav.unlink(missing_ok=True)
        raise
    return SpeechAudio(out_wav, samples, samples.size / SPEECH_RATE, source, peak, active)


# --- video output ---------------------------------------------------------------------------------

OUTPUT_AUDIO_RATE = 48000  # the video norm; also 21 ms AAC frames (64 ms at 16 kHz) for tight sync


class VideoWriter:
    """Stream RGB frames into an H.264/AAC mp4 without holding them all in memory."""

    def __init__(
        self,
        out: Path,
        width: int,
        height: int,
        audio_wav: Path,
        fps: int = 25,
        metadata: dict[str, str] | None = None,
        crf: int = 16,
        output_size: int | None = None,
    ) -> None:
        """Check the settings; ffmpeg starts on entering the context."""
        if width < 2 or height < 2:
            raise ValueError(f"frame size {width}x{height} is too small")
        if output_size is None and (width % 2 or height % 2):
            raise ValueError(f"yuv420p needs even sizes, got {width}x{height}; set output_size")
        if output_size is not None and (output_size < 2 or output_size % 2):
            raise ValueError(f"output_size must be even and >= 2, got {output_size}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.out = Path(out)
        self.width, self.height, self.fps, self.crf = width, height, fps, crf
        self.audio_wav = Path(audio_wav)
        self.metadata = dict(metadata or {})
        self.output_size = output_size
        self.frames_written = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def _video_part(self) -> Path:
        """The video-only intermediate (frames are encoded before their count is known)."""
        assert self._workdir is not None
        return self._workdir / "video.mp4"

    def __enter__(self) -> VideoWriter:
        """Start the ffmpeg encoder reading raw frames from a pipe."""
        if self._proc is not None:
            raise RuntimeError("this VideoWriter is already open")
        if not self.audio_wav.is_file():
            raise MediaError("encode_failed", f"the audio {self.audio_wav} does not exist")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        scale = (
            f"scale={self.output_size}:{self.output_size}:flags=lanczos,"
            if self.output_size
            else ""
        )
        cmd = _ffmpeg_cmd(
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
            "-framerate", str(self.fps), "-i", "pipe:0", "-an",
            # swscale converts RGB with the BT.601 matrix; say so, or players guess BT.709 for HD
            "-vf", f"{scale}format=yuv420p", "-colorspace", "smpte170m",
            *_x264_args(self.fps, crf=self.crf), "-f", "mp4", str(self._video_part),
        )  # fmt: skip
        # stderr goes to a file: a pipe nobody reads fills up and blocks ffmpeg, and us with it
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        return self

    def write(self, rgb: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 frame or a (B, H, W, 3) batch."""
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("VideoWriter.write outside its `with` block")
        frames = rgb[None] if rgb.ndim == 3 else rgb
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected ({self.height}, {self.width}, 3) frames, got shape {rgb.shape}"
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).data.cast("B"))
        except (BrokenPipeError, OSError) as exc:  # ffmpeg died; its stderr says why
            raise MediaError("encode_failed", self._error_text()) from exc
        self.frames_written += len(frames)

    def _error_text(self) -> str:
        """The tail of the encoder's stderr."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._stderr is None:
            return "ffmpeg failed"
        self._stderr.seek(0)
        return _stderr_tail(self._stderr.read().decode(errors="replace"))

    def close(self) -> None:
        """Finish encoding and mux the audio, cut or padded to the video's exact duration."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("VideoWriter.close without an open writer")
        try:
            if proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):  # ffmpeg died: its exit code says so
                    proc.stdin.close()
            if proc.wait() != 0:
                raise MediaError("encode_failed", self._error_text())
            if self.frames_written == 0:
                raise MediaError("encode_failed", "no frames were written")
            part = self._video_part.with_name("out.mp4")
            # Video is copied, so every frame survives; the audio is padded with silence and cut
            # at frames/fps, which the mp4 edit list records to the sample.
            cmd = _ffmpeg_cmd(
                "-i", str(self._video_part), "-i", str(self.audio_wav),
                "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-af", "apad", "-t", f"{self.frames_written / self.fps:.6f}",
                *_aac_args(OUTPUT_AUDIO_RATE), *_mp4_args(self.metadata), str(part),
            )  # fmt: skip
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise MediaError("encode_failed", _stderr_tail(result.stderr))
            os.replace(part, self.out)
        except BaseException:
            self.out.unlink(missing_ok=True)
            raise
        finally:
            self._cleanup()

    def abort(self) -> None:
        """Stop ffmpeg and remove everything written so far."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.out.unlink(missing_ok=True)
        self._cleanup()

    def _cleanup(self) -> None:
        """Reap ffmpeg and remove the scratch files."""
        if self._proc is not None:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
            self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish on a clean exit; on an exception kill ffmpeg and leave no output."""
        if self._proc is None:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


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
