"""The corpus builder: one source video to utterances, or a refusal with its code."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from talkinghead.corpus.clips import (
    CorpusBuildConfig,
    SourceOutcome,
    SourceTags,
    build_source,
    content_sha256,
)
from talkinghead.corpus.format import ARRAYS, REFUSALS, SAMPLE_RATE, ClipRecord
from talkinghead.corpus.sync import measure_lag
from talkinghead.corpus.utterances import plan_utterances
from talkinghead.preprocess.pose import STABLE_POINTS
from tests.fixtures.corpus_sources import EXPECTED, IN_TINY_CORPUS, SIZE, long_source

SAMPLES_PER_FRAME = SAMPLE_RATE // 25


def tags_for(path: Path) -> SourceTags:
    return SourceTags(
        identity="ada",
        speaker="ada",
        language="en",
        licence="CC-BY-4.0",
        source=str(path),
        source_sha256=content_sha256(path),
    )


def build(
    path: Path,
    work: Path,
    config: CorpusBuildConfig | None = None,
    emit: Callable[[ClipRecord], None] | None = None,
) -> SourceOutcome:
    return build_source(path, tags_for(path), work, config, emit=emit)


@pytest.fixture(scope="module")
def sources(corpus_source_files: dict[str, Path]) -> dict[str, Path]:
    return corpus_source_files


@pytest.fixture(scope="module")
def good(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SourceOutcome:
    stages: list[str] = []
    outcome = build_source(
        sources["good"],
        tags_for(sources["good"]),
        tmp_path_factory.mktemp("good-work"),
        progress=lambda stage, _fraction: stages.append(stage),
    )
    assert {"tracking", "utterances", "frames"} <= set(stages)
    return outcome


def test_content_sha256_streams_the_whole_file(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert content_sha256(tmp_path / "f", chunk=1 << 16) == hashlib.sha256(data).hexdigest()


# The tiny corpus' build checks the others' codes (tests/integration/test_corpus_build.py).
@pytest.mark.parametrize("name", [n for n, c in EXPECTED.items() if c and n not in IN_TINY_CORPUS])
def test_bad_sources_are_refused_with_their_code(
    name: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    outcome = build(sources[name], tmp_path)
    assert outcome.records == []
    assert outcome.refusals, name
    assert outcome.refusals[0].code == EXPECTED[name], outcome.refusals
    assert all(r.code in REFUSALS for r in outcome.refusals)
    assert outcome.refusals[0].to_json()["message"]
    if name.startswith("audio_"):  # the measured lag's sign says which way the audio moved
        assert ("+5" if name == "audio_late" else "-5") in outcome.refusals[0].message


def test_one_person_across_a_cut_keeps_both_shots(sources: dict[str, Path], tmp_path: Path) -> None:
    outcome = build(sources["one_person_cut"], tmp_path)
    assert outcome.refusals == []
    assert outcome.counts["cuts"] == 1 and outcome.counts["segments"] == 2
    shots = {tuple(r.meta.extra["shot"]) for r in outcome.records}
    assert len(shots) == 2
    # no utterance straddles the cut at 4 s
    for record in outcome.records:
        end = record.meta.start_s + record.meta.duration_s
        assert end <= 4.0 + 1e-6 or record.meta.start_s >= 4.0 - 1e-6


def test_good_clip_gives_checked_records_with_sensible_values(good: SourceOutcome) -> None:
    assert good.refusals == []
    assert len(good.records) >= 1
    for i, record in enumerate(good.records):
        record.check()
        meta, arrays, t = record.meta, record.arrays, record.meta.num_frames
        assert set(arrays) == set(ARRAYS)
        assert meta.key == f"{meta.source_sha256[:16]}-{i:03d}"
        assert (meta.identity, meta.language, meta.licence) == ("ada", "en", "CC-BY-4.0")
        assert meta.source_size == (SIZE, SIZE)
        assert 3.0 <= meta.duration_s <= 12.0 and t == round(meta.duration_s * 25)
        xy = arrays["landmarks"][..., :2]
        assert np.isfinite(arrays["landmarks"]).all() and np.isfinite(arrays["canonical"]).all()
        assert xy.min() >= 0 and xy.max() <= SIZE
        assert np.isfinite(arrays["pose"]).all() and np.abs(arrays["pose"][:, :3]).max() < 45
        assert arrays["pose"][:, 5].min() > 0  # the head is in front of the camera
        assert 0.1 < float(np.median(arrays["eye_ratio"])) < 0.6
        assert np.ptp(arrays["mouth_ratio"]) > 0.1  # the mouth opens and closes
        x0, y0, x1, y1 = arrays["crop_box"]
        assert x1 - x0 == y1 - y0 and x0 >= 0 and y0 >= 0 and x1 <= SIZE and y1 <= SIZE
        face = arrays["face_box"]
        assert (face[:, 0] >= x0).all() and (face[:, 2] <= x1).all()  # the face is in the crop
        lips = arrays["lips_box"]
        assert (lips[:, :2] >= face[:, :2]).all() and (lips[:, 2:] <= face[:, 2:]).all()
        assert arrays["audio_features"].shape == (t, meta.feature_dim) and meta.feature_dim > 0
        assert record.audio.shape == (t * SAMPLES_PER_FRAME,) and np.abs(record.audio).max() > 1000
        assert record.crops.dtype == np.uint8 and record.crops.std() > 20
        # the person mask covers the face in the crop's middle, not the corners' background
        assert record.masks[:, 120:136, 120:136].mean() > 200
        assert record.masks[:, :8, -8:].mean() < 50
        assert abs(meta.av_offset_frames) <= 1.0


def _rigid_spread(points: np.ndarray) -> float:
    """Spread over frames of the rigid points, after removing position and scale per frame."""
    x = points.astype(np.float64)
    x = x - x[:, STABLE_POINTS].mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x[:, 263] - x[:, 33], axis=1)[:, None, None]
    return float(x[:, STABLE_POINTS].std(axis=0).mean())


def test_canonical_landmarks_are_nearly_pose_invariant(good: SourceOutcome) -> None:
    record = max(good.records, key=lambda r: np.ptp(r.arrays["pose"][:, 0]))
    assert np.ptp(record.arrays["pose"][:, 0]) > 15  # the head does turn in this utterance
    camera = _rigid_spread(record.arrays["landmarks"])
    canonical = _rigid_spread(record.arrays["canonical"])
    assert canonical < 0.5 * camera
    # in the units of the reference shape: outer eye corners ~9 cm apart
    canon = record.arrays["canonical"]
    eye = np.linalg.norm(canon[:, 263] - canon[:, 33], axis=1)
    assert 0.07 < float(np.median(eye)) < 0.11


def _shift(wave: np.ndarray, frames: int) -> np.ndarray:
    """The audio moved `frames` later (earlier if negative), same length."""
    k = frames * SAMPLES_PER_FRAME
    pad = np.zeros(abs(k), wave.dtype)
    if k > 0:
        return np.concatenate([pad, wave[:-k]])
    return np.concatenate([wave[-k:], pad]) if k < 0 else wave


def _real_style(mouth: np.ndarray) -> np.ndarray:
    """Mouth opening as real speech has it: blurred, not proportional, noisy, a frame early."""
    rng = np.random.default_rng(0)
    x = gaussian_filter1d(mouth.astype(np.float64), 1.2) ** 0.6
    x = np.roll(x, -1)  # lips part a little before the sound starts
    x += rng.normal(0.0, 0.15 * x.std(), len(x))
    x[rng.random(len(x)) < 0.1] = x.min()  # closures within speech (m, b, p)
    return x


@pytest.mark.parametrize("style", ["synthetic", "real"])
def test_av_lag_is_measured_in_both_directions(good: SourceOutcome, style: str) -> None:
    record = good.records[0]
    mouth = record.arrays["mouth_ratio"]
    mouth = _real_style(mouth) if style == "real" else mouth
    wave = record.audio.astype(np.float32) / 32768.0
    found = {s: measure_lag(mouth, _shift(wave, s), 25, SAMPLE_RATE).lag for s in (-5, 0, 5)}
    lead = 1.0 if style == "real" else 0.0  # the real-style mouth moves a frame early
    for shift, lag in found.items():
        assert abs(lag - (shift + lead)) <= 1.0, found
    assert abs(found[0]) <= 2.0  # accepted; the shifted ones are past the tolerance
    assert abs(found[5]) > 2.0 and abs(found[-5]) > 2.0


def test_long_clip_is_split_at_pauses_and_streamed(tmp_path: Path) -> None:
    path = long_source(tmp_path)  # a small still face in a corner: not a competing subject
    emitted: list[ClipRecord] = []
    outcome = build(path, tmp_path / "work", emit=emitted.append)
    assert outcome.records == [] and outcome.refusals == []
    assert len(emitted) >= 3 and outcome.counts["utterances"] == len(emitted)
    ends = 0.0
    for i, record in enumerate(emitted):
        record.check()
        assert record.meta.key.endswith(f"-{i:03d}")
        assert 3.0 <= record.meta.duration_s <= 12.0
        assert record.meta.start_s >= ends - 1e-6  # in order, no overlap
        ends = record.meta.start_s + record.meta.duration_s
        assert not isinstance(record.crops, np.memmap)  # streamed records live in memory
        # utterances start and end in pauses: their first and last 40 ms are quiet (but the
        # first one, where the speech starts with the recording)
        loudest = np.abs(record.audio).max()
        assert np.abs(record.audio[-SAMPLES_PER_FRAME:]).max() < 0.1 * loudest
        assert i == 0 or np.abs(record.audio[:SAMPLES_PER_FRAME]).max() < 0.1 * loudest


def _bursts(pattern: list[tuple[float, bool]], rate: int = SAMPLE_RATE) -> np.ndarray:
    """Noise bursts (True) and silences (False) of the given lengths, seconds."""
    rng = np.random.default_rng(1)
    parts = [
        rng.normal(0, 0.1, round(s * rate)) if loud else rng.normal(0, 1e-4, round(s * rate))
        for s, loud in pattern
    ]
    return np.concatenate(parts).astype(np.float32)


def test_plan_utterances_splits_at_long_pauses_only() -> None:
    pattern = [(0.5, False), (2.0, True), (0.15, False), (2.0, True), (0.6, False)]
    wave = _bursts([*pattern, (3.5, True), (0.6, False), (1.0, True), (0.5, False)])
    spans, dropped = plan_utterances(wave, SAMPLE_RATE, 3.0, 12.0, 0.3)
    # The 0.15 s gap stays inside the first utterance; the trailing 1 s fragment joins the
    # 3.5 s one (the shorter pause) since together they stay under 12 s.
    assert len(spans) == 2 and dropped == []
    assert spans[0].start == pytest.approx(0.4, abs=0.05)
    assert spans[0].end == pytest.approx(4.75, abs=0.05)
    assert spans[1].start == pytest.approx(5.15, abs=0.05)
    assert spans[1].end == pytest.approx(10.45, abs=0.05)


def test_plan_utterances_cuts_long_speech_and_drops_lone_fragments() -> None:
    wave = _bursts([(25.0, True), (2.0, False), (1.0, True), (3.0, False)])
    spans, dropped = plan_utterances(wave, SAMPLE_RATE, 3.0, 12.0, 0.3)
    assert len(dropped) == 1 and dropped[0].duration == pytest.approx(1.0, abs=0.05)
    assert len(spans) >= 3
    assert all(3.0 <= s.duration <= 12.0 for s in spans)
    assert sum(s.duration for s in spans) == pytest.approx(25.1, abs=0.1)
    silent, none = plan_utterances(np.zeros(5 * SAMPLE_RATE, np.float32), SAMPLE_RATE, 3, 12, 0.3)
    assert silent == [] and none == []


def test_config_refuses_limits_the_split_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        CorpusBuildConfig(min_utterance_s=3.0, max_utterance_s=5.0)
    with pytest.raises(ValueError, match="unknown audio encoder"):  # the operator's error: raised
        tags = SourceTags("ada", "ada", "en", "CC0", "none.mp4", "0" * 64)
        build_source(tmp_path / "none.mp4", tags, tmp_path, CorpusBuildConfig(audio_encoder="no"))
