"""The pretrained speech encoder against real `transformers` checkpoints saved here.

Tiny randomly initialised wav2vec2 / HuBERT models (real transformers classes, the real conv
feature-encoder layout: stride 320 samples, 50 Hz) are saved with `save_pretrained` into a temp
directory: exactly what an operator points `audio_encoder_path` at. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from talkinghead.preprocess.audio import SAMPLE_RATE, PretrainedSpeechEncoder, encoder_from_name
from tests.fixtures.servers import missing

TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,  # conv_kernel / conv_stride keep the defaults: 400-sample field, 320 hop
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
FRAMES = 125  # 5 s at 25 fps


def _save(path: Path, model: Any, do_normalize: bool = True) -> Path:
    """Write `model` and a wav2vec2 feature extractor as one local checkpoint directory."""
    from transformers import Wav2Vec2FeatureExtractor

    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Local checkpoint directories: 'wav2vec2', 'hubert' and 'local' (no attention layers)."""
    if importlib.util.find_spec("transformers") is None:
        missing("transformers (the pretrained audio encoder's test needs the dev extra)")
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    root = tmp_path_factory.mktemp("speech-models")
    torch.manual_seed(0)
    local = Wav2Vec2Config(
        **{**TINY, "num_hidden_layers": 0}, feat_extract_norm="layer", do_stable_layer_norm=True
    )
    return {
        "wav2vec2": _save(root / "wav2vec2", Wav2Vec2Model(Wav2Vec2Config(**TINY))),
        "hubert": _save(root / "hubert", HubertModel(HubertConfig(**TINY))),
        # Every op is local in time here, so chunked encoding must equal one pass exactly.
        "local": _save(root / "local", Wav2Vec2Model(local), do_normalize=False),
    }


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """5 s at 16 kHz: 1 s silence, 3 s espeak-ng speech, 1 s silence."""
    from talkinghead.synthetic import speech

    words = speech(tmp_path_factory.mktemp("voice") / "s.wav", "The quick brown fox", "en", 3.0)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    return np.concatenate([silence, words, silence])


def _states(path: Path, wave: np.ndarray) -> np.ndarray:
    """Last hidden states (N, dim) of the whole wave, computed with transformers directly."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.inference_mode():
        out = model(**extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt"))
    return np.asarray(out.last_hidden_state[0].numpy())


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_states_at_50hz_are_averaged_in_pairs_per_frame(
    kind: str, checkpoints: dict[str, Path], voice: np.ndarray
) -> None:
    enc = encoder_from_name("pretrained", checkpoints[kind])
    assert isinstance(enc, PretrainedSpeechEncoder)
    assert (enc.name, enc.dim, enc.stride, enc.field) == (f"pretrained:{kind}", 32, 320, 400)
    feats = enc.encode(voice, FRAMES, fps=25)
    assert feats.shape == (FRAMES, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    states = _states(checkpoints[kind], voice)  # (249, 32): 50 Hz over 5 s
    assert len(states) == (voice.size - 400) // 320 + 1 == 249
    i = np.arange(FRAMES)
    expected = (states[2 * i] + states[np.minimum(2 * i + 1, len(states) - 1)]) / 2
    np.testing.assert_allclose(feats, expected, atol=1e-4)
    assert enc.encode(voice, 150, fps=30).shape == (150, 32)
    assert enc.encode(voice, 0).shape == (0, 32)


def test_deterministic_and_short_audio_is_padded(
    checkpoints: dict[str, Path], voice: np.ndarray
) -> None:
    a = encoder_from_name("pretrained", checkpoints["hubert"]).encode(voice, FRAMES)
    b = encoder_from_name("pretrained", checkpoints["hubert"]).encode(voice.copy(), FRAMES)
    assert np.array_equal(a, b)
    short = encoder_from_name("pretrained", checkpoints["hubert"]).encode(voice[:100], 10)
    assert short.shape == (10, 32) and np.isfinite(short).all()


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_silence_and_speech_frames_differ(
    kind: str, checkpoints: dict[str, Path], voice: np.ndarray
) -> None:
    feats = encoder_from_name("pretrained", checkpoints[kind]).encode(voice, FRAMES)
    silence, words = feats[5:20], feats[30:95]  # past the positional conv (8 states) at edges
    assert silence.std(axis=0).mean() < 0.01 * words.std(axis=0).mean()
    spread = np.linalg.norm(silence - silence.mean(axis=0), axis=1).max()
    distance = np.linalg.norm(words - silence.mean(axis=0), axis=1)  # (65,); pauses are near 0
    assert np.median(distance) > max(1.0, 100 * spread)


def test_chunks_line_up_with_one_pass(checkpoints: dict[str, Path], voice: np.ndarray) -> None:
    whole = PretrainedSpeechEncoder(checkpoints["local"]).encode(voice, FRAMES)
    for chunk, context in [(1.0, 0.5), (0.52, 0.2)]:
        enc = PretrainedSpeechEncoder(
            checkpoints["local"], chunk_seconds=chunk, context_seconds=context
        )
        np.testing.assert_allclose(enc.encode(voice, FRAMES), whole, atol=1e-4)
    # Without context the positional convolution sees zeros at chunk edges: context matters.
    bare = PretrainedSpeechEncoder(checkpoints["local"], chunk_seconds=1.0, context_seconds=0.0)
    assert np.abs(bare.encode(voice, FRAMES) - whole).max() > 0.1


def test_loads_offline_only(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the pretrained audio encoder opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    seen: list[dict[str, Any]] = []
    for cls in (transformers.AutoModel, transformers.AutoFeatureExtractor):
        original = cls.from_pretrained

        def spy(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            seen.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    enc = encoder_from_name("pretrained", checkpoints["wav2vec2"])
    assert enc.dim == 32 and len(seen) == 2
    assert all(kwargs.get("local_files_only") is True for kwargs in seen)
    # A directory that lacks the weights or the feature extractor fails with a clear message.
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((checkpoints["wav2vec2"] / "config.json").read_text())
    no_extractor = tmp_path / "no-extractor"
    no_extractor.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_extractor / name).write_bytes((checkpoints["wav2vec2"] / name).read_bytes())
    for bad in (config_only, no_extractor, tmp_path):
        with pytest.raises(ValueError, match="cannot load a speech model"):
            encoder_from_name("pretrained", bad)


def test_half_precision_checkpoint_runs_on_cpu(
    checkpoints: dict[str, Path], voice: np.ndarray, tmp_path: Path
) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(checkpoints["wav2vec2"]), local_files_only=True)
    half = _save(tmp_path / "half", model.half())
    feats = encoder_from_name("pretrained", half).encode(voice, FRAMES)
    full = encoder_from_name("pretrained", checkpoints["wav2vec2"]).encode(voice, FRAMES)
    assert feats.dtype == np.float32 and np.abs(feats - full).max() < 0.05 * np.abs(full).max()


def test_a_model_without_a_conv_feature_encoder_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    text = _save(tmp_path / "bert", BertModel(config))
    with pytest.raises(ValueError, match="not a wav2vec2-style speech model"):
        encoder_from_name("pretrained", text)


def test_dataset_manifest_records_the_pretrained_encoder(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from talkinghead.preprocess.manifest import DatasetReader
    from talkinghead.preprocess.pipeline import PreprocessConfig, preprocess_video
    from talkinghead.synthetic import generate

    clip = generate(tmp_path / "clip", seconds=5, size=256)
    config = PreprocessConfig(
        audio_encoder="pretrained", audio_encoder_path=checkpoints["hubert"], size=64
    )
    manifest = preprocess_video(clip.video, tmp_path / "ds", config)
    meta = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert meta["audio"]["encoder"] == "pretrained:hubert" and meta["audio"]["dim"] == 32
    feats = np.load(tmp_path / "ds" / "audio_features.npy")
    assert feats.shape == (manifest.num_frames, 32) and manifest.num_frames >= 100
    assert np.isfinite(feats).all() and feats.std(axis=0).mean() > 0
    reader = DatasetReader(tmp_path / "ds")
    assert reader.audio_window(0).shape == (2 * meta["audio"]["context"], 32)
