"""Speech loading and video writing on real files made here with espeak-ng and ffmpeg."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from talkinghead.media import (
    SILENCE_ACTIVE_DBFS,
    SILENCE_PEAK_DBFS,
    MediaError,
    VideoWriter,
    encode_still_with_audio,
    ffmpeg_exe,
    load_speech,
    probe,
    write_png,
)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

TEXT = "The quick brown fox jumps over the lazy dog."


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def encoders() -> str:
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    )
    return out.stdout


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float samples (channels averaged) and the sample rate of a 16-bit WAV."""
    with wave.open(str(path), "rb") as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        rate, channels = w.getframerate(), w.getnchannels()
    return raw.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0, rate


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes())
    return path


def envelope(x: np.ndarray, rate: int, hop_s: float = 0.02) -> np.ndarray:
    """RMS per 20 ms: compares signals across sample rates and lossy codecs."""
    hop = round(rate * hop_s)
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 2.5 s of espeak-ng speech (22.05 kHz mono)."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), TEXT], check=True)
    return path


FORMATS = [
    # id, extension, encoder, sample rate, channels, codec name PyAV reports
    ("wav-8k-mono", "wav", "pcm_s16le", 8000, 1, "pcm_s16le"),
    ("wav-48k-stereo", "wav", "pcm_s16le", 48000, 2, "pcm_s16le"),
    ("mp3-22k", "mp3", "libmp3lame", 22050, 1, "mp3"),
    ("m4a-aac-44k-stereo", "m4a", "aac", 44100, 2, "aac"),
    ("ogg-vorbis-16k", "ogg", "libvorbis", 16000, 1, "vorbis"),
    ("ogg-opus-48k", "ogg", "libopus", 48000, 1, "opus"),
    ("flac-32k", "flac", "flac", 32000, 1, "flac"),
]


@pytest.mark.parametrize(
    ("ext", "encoder", "rate", "channels", "codec"),
    [pytest.param(*f[1:], id=f[0]) for f in FORMATS],
)
def test_every_format_becomes_16k_mono(
    speech: Path, tmp_path: Path, ext: str, encoder: str, rate: int, channels: int, codec: str
) -> None:
    if f" {encoder} " not in encoders():
        pytest.skip(f"this ffmpeg build has no {encoder} encoder to make the {ext} sample")
    src = tmp_path / f"in.{ext}"
    ffmpeg("-i", str(speech), "-ar", str(rate), "-ac", str(channels), "-c:a", encoder, str(src))
    got = load_speech(src, tmp_path / "out.wav", max_seconds=10)

    assert (got.source.codec, got.source.sample_rate, got.source.channels) == (
        codec,
        rate,
        channels,
    )
    audio = probe(got.wav).audio
    assert audio is not None and (audio.codec, audio.sample_rate, audio.channels) == (
        "pcm_s16le",
        16000,
        1,
    )
    assert got.wave.dtype == np.float32 and got.wave.ndim == 1
    assert float(np.abs(got.wave).max()) <= 1.0
    assert got.duration_s == pytest.approx(got.wave.size / 16000)
    ref, ref_rate = read_wav(speech)
    assert abs(got.duration_s - ref.size / ref_rate) <= 0.06
    a, b = envelope(ref, ref_rate), envelope(got.wave, 16000)
    n = min(a.size, b.size)
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.9


def test_video_file_audio_track_is_used(speech: Path, tmp_path: Path) -> None:
    src = tmp_path / "talk.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=4", "-i", str(speech),
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(src),
    )  # fmt: skip
    got = load_speech(src, tmp_path / "out.wav", max_seconds=10)
    ref, ref_rate = read_wav(speech)
    assert got.source.codec == "aac"
    assert abs(got.duration_s - ref.size / ref_rate) <= 0.06


def refusal(src: Path, out: Path, max_seconds: float = 10, min_seconds: float = 0.2) -> str:
    """The error code load_speech gives; checks that nothing, not even a stale file, is left."""
    out.write_bytes(b"stale result of an earlier run")
    with pytest.raises(MediaError) as info:
        load_speech(src, out, max_seconds=max_seconds, min_seconds=min_seconds)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a partial file was left behind"
    assert info.value.message  # a human-readable reason
    return info.value.code


def test_garbage_and_truncated_files_are_unreadable(speech: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    # m4a puts its index (moov) at the end by default, so a cut-short upload has no index at all
    full = tmp_path / "full.m4a"
    ffmpeg("-i", str(speech), "-c:a", "aac", str(full))
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.3)])
    for src in (garbage, empty, cut):
        assert refusal(src, tmp_path / "out.wav") == "unreadable_media", src.name


def test_video_without_audio_has_no_audio_stream(tmp_path: Path) -> None:
    src = tmp_path / "mute.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=1", "-c:v", "libx264", str(src)
    )
    assert refusal(src, tmp_path / "out.wav") == "no_audio_stream"


def test_too_long_before_and_after_decoding(speech: Path, tmp_path: Path) -> None:
    # 2.8 s stated by the container: refused from the probe, before decoding
    assert refusal(speech, tmp_path / "out.wav", max_seconds=1.0) == "too_long"
    # 1.3 s is within the probe's slack for a 1.0 s limit: the decoded length refuses it
    near = tmp_path / "near.wav"
    ffmpeg("-i", str(speech), "-t", "1.3", str(near))
    assert refusal(near, tmp_path / "out.wav", max_seconds=1.0) == "too_long"
    # Matroska written to a pipe states no duration at all: the decode is bounded and refused
    streamed = tmp_path / "streamed.mka"
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-i", str(speech), "-c:a", "flac"]
    with streamed.open("wb") as sink:
        subprocess.run([*cmd, "-f", "matroska", "pipe:1"], stdout=sink, check=True)
    with av.open(str(streamed)) as c:
        assert not c.duration and not c.streams.audio[0].duration
    assert refusal(streamed, tmp_path / "out.wav", max_seconds=1.0) == "too_long"


def test_too_short(tmp_path: Path) -> None:
    src = tmp_path / "blip.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.1", str(src))
    assert refusal(src, tmp_path / "out.wav") == "too_short"


def test_silence_and_faint_noise_are_silent(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    level = 10 ** (-70 / 20)  # white noise at -70 dBFS RMS
    cases = {
        "digital": np.zeros(32000),
        "dc-offset": np.full(32000, 0.25),  # an offset is not sound
        "noise-70dB": rng.normal(0.0, level, 32000),
    }
    for name, samples in cases.items():
        src = write_wav(tmp_path / f"{name}.wav", samples)
        assert refusal(src, tmp_path / "out.wav") == "silent_audio", name


def test_quiet_speech_passes(speech: Path, tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    ffmpeg("-i", str(speech), "-af", "volume=-30dB", str(quiet))
    got = load_speech(quiet, tmp_path / "out.wav", max_seconds=30)
    assert got.wav.exists()
    assert got.peak_dbfs > SILENCE_PEAK_DBFS + 10 and got.active_dbfs > SILENCE_ACTIVE_DBFS + 10
    # long silence around it must not dilute the level into a refusal
    padded = tmp_path / "padded.wav"
    ffmpeg("-i", str(quiet), "-af", "adelay=6000,apad=pad_dur=6", str(padded))
    got = load_speech(padded, tmp_path / "out2.wav", max_seconds=30)
    assert got.duration_s > 14 and got.active_dbfs > SILENCE_ACTIVE_DBFS + 10


# --- VideoWriter ----------------------------------------------------------------------------------

N = 37
SIZE = 64


def frame(i: int, size: int = SIZE) -> np.ndarray:
    """A smooth colour gradient that moves with i."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.stack(
        [
            128 + 100 * np.sin((x + 2 * i) / 16),
            128 + 100 * np.cos((y - i) / 20),
            np.full_like(x, (40 + 5 * i) % 256),
        ],
        axis=-1,
    )
    return rgb.round().astype(np.uint8)


def tone(path: Path, seconds: float) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}", "-ar", "16000", str(path))
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def decode(path: Path) -> tuple[list[np.ndarray], list[int], dict[str, float], dict[str, str]]:
    """RGB frames, video pts, stream facts and container tags of an mp4."""
    with av.open(str(path)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        frames, pts = [], []
        for f in c.decode(vs):
            assert f.pts is not None
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
        c.seek(0)
        samples = sum(f.samples for f in c.decode(aus))
        assert vs.average_rate and vs.time_base and vs.duration and aus.time_base and aus.duration
        facts = {
            "fps": float(vs.average_rate),
            "v_dur": float(vs.duration * vs.time_base),
            "a_dur": float(aus.duration * aus.time_base),
            "a_decoded": samples / aus.codec_context.sample_rate,
            "v_tb": float(vs.time_base),
        }
        assert vs.codec_context.name == "h264" and vs.codec_context.pix_fmt == "yuv420p"
        assert aus.codec_context.name == "aac"
        return frames, pts, facts, dict(c.metadata)


@pytest.mark.parametrize("audio_s", [1.48, 0.5, 3.0], ids=["equal", "shorter", "longer"])
def test_writer_frames_audio_and_tags(tmp_path: Path, audio_s: float) -> None:
    out = tmp_path / "out.mp4"
    tags = {"comment": "AI-generated by talkinghead", "talkinghead_render": "r-1"}
    written = [frame(i) for i in range(N)]
    with VideoWriter(out, SIZE, SIZE, tone(tmp_path / "a.wav", audio_s), metadata=tags) as w:
        w.write(np.stack(written[:5]))  # a batch, then single frames
        for f in written[5:]:
            w.write(f)
        assert w.frames_written == N
    frames, pts, facts, meta = decode(out)

    assert len(frames) == N and facts["fps"] == 25
    steps = {b - a for a, b in itertools.pairwise(pts)}
    assert len(steps) == 1 and steps.pop() * facts["v_tb"] == pytest.approx(0.04)  # CFR
    assert facts["v_dur"] == pytest.approx(N / 25)
    assert abs(facts["a_dur"] - facts["v_dur"]) <= 0.04
    assert abs(facts["a_decoded"] - facts["v_dur"]) <= 0.04  # incl. the last AAC frame's padding
    assert meta.get("comment") == tags["comment"] and meta.get("talkinghead_render") == "r-1"
    assert min(psnr(a, b) for a, b in zip(written, frames, strict=True)) > 35
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "out.mp4"]  # no scratch left


def test_writer_scales_to_output_size(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with VideoWriter(out, SIZE, SIZE, tone(tmp_path / "a.wav", 0.5), output_size=128) as w:
        for i in range(12):
            w.write(frame(i))
    frames, _, _, _ = decode(out)
    assert len(frames) == 12 and frames[0].shape == (128, 128, 3)
    halved = frames[5].reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    assert psnr(halved, frame(5)) > 30  # the same picture, upsampled


def test_writer_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    audio = tone(tmp_path / "a.wav", 1.0)
    with (
        pytest.raises(RuntimeError, match="renderer broke"),
        VideoWriter(out, SIZE, SIZE, audio) as w,
    ):
        w.write(frame(0))
        proc = w._proc
        raise RuntimeError("renderer broke")
    assert proc is not None and proc.poll() is not None  # ffmpeg is gone, and reaped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_writer_rejects_bad_frames_and_keeps_going(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with VideoWriter(out, SIZE, SIZE, tone(tmp_path / "a.wav", 0.5)) as w:
        for bad in (
            np.zeros((32, SIZE, 3), np.uint8),
            np.zeros((SIZE, SIZE, 4), np.uint8),
            np.zeros((SIZE, SIZE, 3), np.float32),
            np.zeros((2, 2, SIZE, SIZE, 3), np.uint8),
        ):
            with pytest.raises(ValueError):
                w.write(bad)
        for i in range(5):
            w.write(frame(i))
    frames, _, _, _ = decode(out)
    assert len(frames) == 5


def test_writer_encode_failure_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    bad_audio = tmp_path / "a.wav"
    bad_audio.write_bytes(b"not audio at all" * 100)
    with pytest.raises(MediaError) as info, VideoWriter(out, SIZE, SIZE, bad_audio) as w:
        w.write(frame(0))
    assert info.value.code == "encode_failed" and info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_writer_reports_a_dead_encoder(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    audio = tone(tmp_path / "a.wav", 1.0)
    with pytest.raises(MediaError) as info, VideoWriter(out, SIZE, SIZE, audio) as w:
        w.write(frame(0))
        assert w._proc is not None
        w._proc.kill()  # as if the OOM killer took it
        w._proc.wait()
        for i in range(1, 20):  # the pipe is broken from here on
            w.write(frame(i))
    assert info.value.code == "encode_failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_encode_still_with_audio_still_works(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    write_png(still, frame(0, 66))
    out = tmp_path / "out.mp4"
    encode_still_with_audio(still, tone(tmp_path / "a.wav", 1.0), out, metadata={"comment": "hi"})
    info = probe(out)
    assert info.video is not None and (info.video.width, info.video.fps) == (66, 25)
    assert abs(info.duration_s - 1.0) < 0.1
    with av.open(str(out)) as c:
        assert c.metadata.get("comment") == "hi"
