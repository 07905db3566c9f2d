"""Shared-model kinds: the registry, config validation, and audio2mouth trained on a toy corpus."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from talkinghead.corpus.format import N_LANDMARKS, ClipMeta, ClipRecord
from talkinghead.corpus.index import build_index
from talkinghead.families.contract import TrainOptions
from talkinghead.metrics import MOUTH_POINTS
from talkinghead.preprocess.features import INNER_LIPS
from talkinghead.sharedmodels import registry
from talkinghead.sharedmodels.audio2mouth import (
    KIND,
    Audio2MouthConfig,
    Audio2MouthRun,
    mouth_opening,
    segment_batches,
)
from talkinghead.sharedmodels.contract import (
    ClipStream,
    ReaderSource,
    SharedModelError,
    SharedModelKind,
)

FEATURE_DIM = 12
FRAMES = 60
# Fast settings for the toy corpus (the kind's defaults are already tiny; these add margin).
SETTINGS: dict[str, Any] = {"stats_clips": 8, "eval_windows": 0}


# -- a toy corpus whose mouths follow the audio ------------------------------------------------


def _mouth_drive() -> tuple[np.ndarray, np.ndarray]:
    """The speech-to-mouth law every speaker shares: opening weights and a lip-shape map."""
    law = np.random.default_rng(1234)
    opening = law.normal(size=FEATURE_DIM) / np.sqrt(FEATURE_DIM)
    shape = law.normal(size=(FEATURE_DIM, N_LANDMARKS, 3)) * 0.004
    return opening, shape


OPENING_W, SHAPE_W = _mouth_drive()
LOWER_INNER = [lo for _, lo in INNER_LIPS]


def toy_clip(identity: int, index: int) -> ClipRecord:
    """A clip whose mouth is a fixed function of its audio features (this and the last frame)."""
    rng = np.random.default_rng([identity, index])
    face = np.random.default_rng(identity).normal(size=(N_LANDMARKS, 3)).astype(np.float64)
    for upper, lower in INNER_LIPS:  # each speaker's own resting gap between the inner lips
        face[lower] = face[upper] + (0.0, 0.04 + 0.01 * (identity % 3), 0.0)
    raw = rng.normal(size=(FRAMES + 2, FEATURE_DIM))
    feats = (raw[2:] + raw[1:-1] + raw[:-2]) / 3.0  # smooth, like real frame features
    drive = np.concatenate([feats[:1], 0.7 * feats[1:] + 0.3 * feats[:-1]])
    canonical = np.repeat(face[None], FRAMES, axis=0)
    canonical += np.einsum("td,dpc->tpc", drive, SHAPE_W)
    canonical[:, LOWER_INNER, 1] += 0.03 * np.tanh(drive @ OPENING_W)[:, None]
    canonical[FRAMES // 2, :, :] = np.nan  # a frame the tracker lost
    zeros = np.zeros((FRAMES, 4), np.float32)
    arrays = {
        "landmarks": canonical.astype(np.float32),
        "canonical": canonical.astype(np.float32),
        "pose": np.zeros((FRAMES, 6), np.float32),
        "eye_ratio": np.full(FRAMES, 0.3, np.float32),
        "mouth_ratio": np.zeros(FRAMES, np.float32),
        "face_box": zeros,
        "lips_box": zeros,
        "crop_box": np.zeros(4, np.float32),
        "audio_features": feats.astype(np.float32),
    }
    meta = ClipMeta(
        key=f"{identity:016x}-{index:03d}", identity=f"id{identity}", speaker=f"id{identity}",
        language="und", licence="test", source="toy", source_sha256="0" * 64, start_s=0.0,
        duration_s=FRAMES / 25, num_frames=FRAMES, crop_size=4, feature_dim=FEATURE_DIM,
    )  # fmt: skip
    crops = np.zeros((FRAMES, 4, 4, 3), np.uint8)
    return ClipRecord(meta, arrays, np.zeros(FRAMES * 640, np.int16), crops, crops[..., 0])


class ListStream:
    """Passes over a list of clips (the clip-level part of a CorpusReader)."""

    def __init__(self, clips: list[ClipRecord]) -> None:
        self._clips = clips

    def clips(self, seed: int | None = None) -> Iterator[ClipRecord]:
        """The clips in order, or shuffled by `seed`."""
        n = len(self._clips)
        order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
        for i in order:
            yield self._clips[int(i)]


class ToyCorpus:
    """A CorpusSource over clips in memory: identities 0-7 train, 8-9 validate."""

    def __init__(self) -> None:
        self.train = [toy_clip(i, k) for i in range(8) for k in range(3)]
        self.val = [toy_clip(i, k) for i in (8, 9) for k in range(2)]

    def __call__(self, split: str | None) -> ClipStream:
        return ListStream(
            {"train": self.train, "val": self.val, None: self.train + self.val}[split]
        )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The toy network is too small to gain from threads; on a busy machine they only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> ToyCorpus:
    return ToyCorpus()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return KIND.config(SETTINGS)


def open_run(corpus: ToyCorpus, workdir: Path, config: dict[str, Any]) -> Audio2MouthRun:
    return KIND.open_training(corpus, workdir, config, TrainOptions())


@pytest.fixture(scope="module")
def trained(
    corpus: ToyCorpus, config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Audio2MouthRun:
    run = open_run(corpus, tmp_path_factory.mktemp("uninterrupted"), config)
    assert run.run() == 60
    return run


def weights(run: Audio2MouthRun) -> dict[str, torch.Tensor]:
    """Everything a resumed run must match: weights, EMA shadow and optimiser moments."""
    out = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    out |= {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
    for i, state in run.optimizer.state_dict()["state"].items():
        out |= {f"adam.{i}.{k}": torch.as_tensor(v) for k, v in state.items()}
    return out


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert unequal == []


# -- the registry ------------------------------------------------------------------------------


def test_the_registry_lists_the_builtin_kind() -> None:
    kind = registry.get_kind("audio2mouth")
    assert kind is KIND
    assert isinstance(kind, SharedModelKind)
    assert kind.family == ""
    assert "audio2mouth" in registry.kinds()


def test_an_unknown_kind_has_its_code() -> None:
    with pytest.raises(SharedModelError) as err:
        registry.get_kind("no-such-model")
    assert err.value.code == "unknown_model_kind"
    assert "audio2mouth" in err.value.message


class _EntryPoint:
    def __init__(self, name: str, obj: object) -> None:
        self.name, self.value, self._obj = name, f"plugin:{name}", obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


class _PluginKind:
    name = "plugin-kind"
    family = ""
    description = "a kind from another package"

    def default_config(self) -> dict[str, Any]:
        return {}

    def config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return dict(overrides)

    def open_training(self, *args: Any) -> Any:
        raise NotImplementedError

    def export(self, run: Any, out_dir: Path) -> dict[str, float]:
        return {}

    def load(self, export_dir: Path) -> Any:
        return None


def test_plugins_register_and_a_broken_one_is_logged_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    points = [
        _EntryPoint("plugin-kind", _PluginKind()),
        _EntryPoint("broken", ImportError("missing dependency")),
        _EntryPoint("misnamed", _PluginKind()),  # its object calls itself plugin-kind
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: points)
    try:
        with caplog.at_level(logging.ERROR):
            found = registry.reload()
        assert list(found) == ["audio2mouth", "plugin-kind"]
        assert "'broken'" in caplog.text and "'misnamed'" in caplog.text
    finally:
        monkeypatch.undo()
        registry.reload()
    assert "plugin-kind" not in registry.kinds()


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"windows": 8},  # unknown key
        {"window": "8"},  # wrong type
        {"batch": 2.5},  # not an integer
        {"batch": True},  # booleans are not counts
        {"coords": 4},  # out of range
        {"lr": 0},
        {"ema_decay": 1.0},
    ],
)
def test_bad_config_is_refused_with_its_code(overrides: dict[str, Any]) -> None:
    with pytest.raises(SharedModelError) as err:
        KIND.config(overrides)
    assert err.value.code == "invalid_config"


def test_config_fills_defaults_and_normalises_numbers() -> None:
    got = KIND.config({"lr": 1, "batch": 16.0})
    assert got == {**KIND.default_config(), "lr": 1.0, "batch": 16}
    assert isinstance(got["lr"], float) and isinstance(got["batch"], int)
    assert KIND.default_config() == Audio2MouthConfig().to_dict()


# -- training ----------------------------------------------------------------------------------


def test_segment_data_depends_only_on_seed_and_segment(
    corpus: ToyCorpus, config: dict[str, Any]
) -> None:
    cfg = Audio2MouthConfig.from_dict(config)
    first = [next(segment_batches(corpus, cfg, 1)) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(first[0], first[1], strict=True))
    other = next(segment_batches(corpus, cfg, 2))
    assert not np.array_equal(first[0][0], other[0])
    assert first[0][0].shape == (cfg.batch, cfg.window, FEATURE_DIM)
    assert first[0][1].shape == (cfg.batch, 40, cfg.coords)


def test_the_model_learns_mouth_motion_from_audio(trained: Audio2MouthRun, tmp_path: Path) -> None:
    metrics = KIND.export(trained, tmp_path)
    assert metrics["val_windows"] == 4 * (FRAMES - 1)  # every tracked validation frame
    assert metrics["baseline_opening_r"] == 0.0
    assert metrics["opening_r"] > 0.6
    assert metrics["mouth_l1"] < 0.8 * metrics["baseline_mouth_l1"]
    assert trained.summary()["steps"] == 60 and trained.done


def test_a_resumed_run_matches_an_uninterrupted_one_bit_for_bit(
    corpus: ToyCorpus, config: dict[str, Any], trained: Audio2MouthRun, tmp_path: Path
) -> None:
    first = open_run(corpus, tmp_path / "a", config)
    assert first.run(40) == 40  # two segments, then the process "dies"
    del first
    resumed = open_run(corpus, tmp_path / "a", config)  # picks up the workdir's checkpoint
    assert resumed.step == 40
    assert resumed.run() == 20
    assert_identical(weights(resumed), weights(trained))


def test_resuming_mid_segment_from_a_saved_checkpoint_is_exact(
    corpus: ToyCorpus, config: dict[str, Any], trained: Audio2MouthRun, tmp_path: Path
) -> None:
    first = open_run(corpus, tmp_path / "a", config)
    first.run(27)
    saved = first.save(tmp_path / "kept.pt")
    other = open_run(corpus, tmp_path / "b", config)
    other.load(saved)
    assert other.step == 27
    other.run()
    assert_identical(weights(other), weights(trained))


def test_a_checkpoint_of_another_config_is_refused(
    corpus: ToyCorpus, config: dict[str, Any], tmp_path: Path
) -> None:
    open_run(corpus, tmp_path, config).run(5)
    with pytest.raises(ValueError, match="different configuration"):
        open_run(corpus, tmp_path, {**config, "lr": 5e-3})


def test_the_export_loads_back_and_predicts_what_the_run_does(
    trained: Audio2MouthRun, corpus: ToyCorpus, tmp_path: Path
) -> None:
    KIND.export(trained, tmp_path)
    loaded = KIND.load(tmp_path)
    feats = corpus.val[0].arrays["audio_features"]
    with trained.ema.applied():
        expected = trained.model.predict(feats)
    got = loaded.predict(feats)
    assert got.shape == (FRAMES, 40, 2)
    np.testing.assert_array_equal(got, expected)
    # The prediction moves the mouth: its opening follows the true one across the clip.
    clip = corpus.val[0]
    truth = clip.arrays["canonical"][:, MOUTH_POINTS, :2]
    valid = np.isfinite(truth).all(axis=(1, 2))
    mean = truth[valid].mean(axis=0)
    r = np.corrcoef(mouth_opening(got + mean)[valid], mouth_opening(truth)[valid])[0, 1]
    assert r > 0.5


def test_loading_something_else_fails_with_its_code(tmp_path: Path) -> None:
    with pytest.raises(SharedModelError) as err:
        KIND.load(tmp_path)
    assert err.value.code == "invalid_export"


# -- a corpus on disk, read through CorpusReader ------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Identities 0-3 train and 4-5 validate, one clip per shard (so seeds reorder shards)."""
    root = tmp_path_factory.mktemp("corpus")
    clips = [toy_clip(i, k) for i in range(6) for k in range(2)]
    build_index(clips, root, "toy", val_identities=["id4", "id5"], max_shard_bytes=1)
    return root


def test_a_stored_corpus_trains_and_resumes_exactly_through_the_reader(
    stored: Path, tmp_path: Path
) -> None:
    source = ReaderSource(stored)
    small = {"total_steps": 12, "segment_steps": 4, "batch": 8, "shuffle_buffer": 16}
    config = KIND.config({**SETTINGS, **small})
    whole = KIND.open_training(source, tmp_path / "whole", config, TrainOptions())
    whole.run()
    first = KIND.open_training(source, tmp_path / "parts", config, TrainOptions())
    first.run(8)
    resumed = KIND.open_training(source, tmp_path / "parts", config, TrainOptions())
    assert resumed.step == 8
    resumed.run()
    assert_identical(weights(resumed), weights(whole))
    metrics = KIND.export(resumed, tmp_path / "export")
    assert metrics["val_windows"] == 4 * (FRAMES - 1)  # only the validation identities
    assert set(metrics) >= {"mouth_l1", "opening_r", "baseline_mouth_l1"}
