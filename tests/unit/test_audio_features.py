"""Audio features: log-mel alignment, windows, language-agnostic input, pretrained errors."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

from talkinghead.media import synth_tone
from talkinghead.preprocess.audio import (
    SAMPLE_RATE,
    AudioEncoder,
    LogMelEncoder,
    PretrainedSpeechEncoder,
    audio_level_dbfs,
    encoder_from_name,
    load_audio,
    window_at,
    windows,
)


def _sine(seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("samples", [0, 1, 399, 16_000, 16_001, 37_123])
@pytest.mark.parametrize("num_frames", [1, 25, 60])
def test_logmel_has_one_row_per_video_frame(samples: int, num_frames: int) -> None:
    enc = LogMelEncoder()
    wave = np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1
    feats = enc.encode(wave, num_frames, fps=25)
    assert feats.shape == (num_frames, enc.dim) == (num_frames, 80)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


def test_logmel_is_deterministic_and_flatten_dim() -> None:
    wave = _sine(1.0) + 0.01 * np.random.default_rng(1).standard_normal(16_000).astype(np.float32)
    a, b = LogMelEncoder().encode(wave, 25), LogMelEncoder().encode(wave.copy(), 25)
    assert np.array_equal(a, b)
    flat = LogMelEncoder(flatten=True)
    assert flat.dim == 320 and flat.encode(wave, 25).shape == (25, 320)
    assert LogMelEncoder().encode(wave, 30, fps=30).shape == (30, 80)
    assert LogMelEncoder().encode(wave, 0).shape == (0, 80)


def test_logmel_is_aligned_to_video_frames() -> None:
    # 0.4 s silence, 0.4 s tone, 0.4 s silence: frames 10..19 at 25 fps hold the tone.
    wave = np.concatenate([np.zeros(6400), _sine(0.4), np.zeros(6400)]).astype(np.float32)
    feats = LogMelEncoder().encode(wave, 30)
    energy = feats.max(axis=1)  # (T,)
    loud = energy > (energy.min() + energy.max()) / 2
    assert loud[11:19].all() and not loud[:9].any() and not loud[21:].any()


def test_sine_and_silence_differ_and_level() -> None:
    enc = LogMelEncoder()
    silence = enc.encode(np.zeros(16_000, np.float32), 25)
    tone = enc.encode(_sine(1.0), 25)
    assert np.abs(silence).max() == 0.0  # normalised silence is all zeros
    assert np.abs(tone - silence).mean() > 0.1
    assert audio_level_dbfs(np.zeros(100, np.float32)) == -120.0
    assert audio_level_dbfs(_sine(1.0, amp=1.0)) == pytest.approx(-3.01, abs=0.05)


def test_encoders_take_only_a_waveform() -> None:
    # Language-agnostic: the interface has no text, phoneme or language input.
    params = list(inspect.signature(LogMelEncoder.encode).parameters)
    assert params == ["self", "wave16k", "num_frames", "fps"]
    enc = encoder_from_name("logmel", None)
    assert isinstance(enc, AudioEncoder) and enc.name == "logmel"


def test_windows_are_centred_and_edge_padded() -> None:
    feats = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # (10, 3)
    win = windows(feats, context=4)
    assert win.shape == (10, 8, 3)
    assert win[5, :, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert win[0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert win[9, :, 0].tolist() == [5, 6, 7, 8, 9, 9, 9, 9]
    for i in (0, 3, 9):
        assert np.array_equal(window_at(feats, i, 4), win[i])
    assert windows(feats).shape == (10, 16, 3)


def test_load_audio_decodes_to_16k_mono(tmp_path: Path) -> None:
    wave = load_audio(synth_tone(tmp_path / "t.wav", seconds=0.5, frequency=300))
    assert wave.dtype == np.float32 and abs(wave.size - 8000) < 400
    assert -30 < audio_level_dbfs(wave) < -10  # ffmpeg's sine source is 1/8 full scale


def test_pretrained_encoder_needs_a_path() -> None:
    with pytest.raises(ValueError, match="local model path"):
        encoder_from_name("pretrained", None)
    with pytest.raises(ValueError, match="needs a local model directory"):
        PretrainedSpeechEncoder(None)
    with pytest.raises(ValueError, match="not a directory"):
        PretrainedSpeechEncoder(Path("/nonexistent/hubert"))
    with pytest.raises(ValueError, match="unknown audio encoder"):
        encoder_from_name("deepspeech-en", None)


def test_pretrained_encoder_without_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="torch` and `transformers"):
        encoder_from_name("pretrained", tmp_path)
