"""The synthetic multi-identity corpus: files, determinism, resuming, identities, lip truth."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from talkinghead.corpus.identities import LANGUAGES, make_identity, skin_tone, text_for
from talkinghead.corpus.phonemes import ROUNDED, SPREAD
from talkinghead.corpus.synth import CLIP_FILES, synth_corpus

IDENTITIES, SECONDS, SEED = 3, 4.0, 5


def _make(out: Path, progress: Callable[[int, int], None] | None = None, jobs: int = 1) -> Path:
    """The tiny test corpus: three identities with one ~4 s clip each, at 128 px."""
    minutes = IDENTITIES * SECONDS / 60.0
    return synth_corpus(out, IDENTITIES, minutes, SEED, 128, (SECONDS, SECONDS), progress, jobs)


def _truth_hash(path: Path) -> str:
    """Hash of every array in a truth file (the zip container itself carries timestamps)."""
    digest = hashlib.sha256()
    with np.load(path) as data:
        for key in sorted(data.files):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(data[key]).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny corpus: three identities with one ~4 s clip each."""
    out = tmp_path_factory.mktemp("corpus")
    seen: list[tuple[int, int]] = []
    sources = _make(out, lambda done, total: seen.append((done, total)))
    assert sources == out / "sources.csv"
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    return out


def _rows(corpus: Path) -> list[dict[str, str]]:
    with (corpus / "sources.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_files_csv_and_streams(corpus: Path) -> None:
    rows = _rows(corpus)
    assert len(rows) == IDENTITIES
    assert list(rows[0]) == ["path", "identity", "speaker", "language", "licence"]
    assert {r["language"] for r in rows} == set(LANGUAGES[:IDENTITIES])
    assert len({r["identity"] for r in rows}) == IDENTITIES
    assert (corpus / "identities.json").is_file()
    for row in rows:
        clip = (corpus / row["path"]).parent
        assert all((clip / name).is_file() for name in CLIP_FILES)
        assert (
            row["licence"] and row["speaker"] == make_identity(SEED, int(row["identity"][2:])).voice
        )
        with av.open(str(clip / "video.mp4")) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and video.average_rate == 25
            assert audio.codec_context.name == "aac" and audio.codec_context.sample_rate == 16000
            assert audio.codec_context.channels == 1
            frames = sum(1 for _ in container.decode(video=0))
        info = sf.info(str(clip / "audio.wav"))
        truth = np.load(clip / "truth.npz")
        n = len(truth["yaw"])
        assert abs(frames - n) <= 1 and info.samplerate == 16000
        assert info.duration == pytest.approx(n / 25, abs=0.05)
        assert truth["visemes"].shape == (n, 5) and truth["landmarks"].shape == (n, 478, 2)
        assert np.allclose(truth["visemes"].sum(axis=1), 1.0, atol=1e-4)
        assert str(truth["language"]) == row["language"] and str(truth["text"])


def test_deterministic_by_seed_and_rerun_skips(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _make(again, jobs=2)  # parallel rendering writes the same clips as serial
    for row in _rows(corpus):
        rel = Path(row["path"]).parent / "truth.npz"
        assert _truth_hash(corpus / rel) == _truth_hash(again / rel)
    assert (corpus / "sources.csv").read_bytes() == (again / "sources.csv").read_bytes()

    clips = [again / Path(r["path"]).parent for r in _rows(again)]
    stamps = {c: (c / "video.mp4").stat().st_mtime_ns for c in clips}
    (clips[1] / "truth.npz").unlink()  # an incomplete clip is made again, the others kept
    _make(again)
    assert (clips[0] / "video.mp4").stat().st_mtime_ns == stamps[clips[0]]
    assert (clips[2] / "video.mp4").stat().st_mtime_ns == stamps[clips[2]]
    assert (clips[1] / "video.mp4").stat().st_mtime_ns != stamps[clips[1]]
    assert _truth_hash(clips[1] / "truth.npz") == _truth_hash(
        corpus / Path(_rows(corpus)[1]["path"]).parent / "truth.npz"
    )


def test_identities_differ() -> None:
    people = [make_identity(0, i) for i in range(48)]
    assert make_identity(0, 7) == people[7] and make_identity(1, 7) != people[7]
    assert len({p.voice for p in people}) >= 10
    assert len({p.language for p in people}) >= 5
    lum = [float(np.dot(p.appearance.skin, [0.299, 0.587, 0.114])) for p in people]
    assert min(lum) < 0.35 and max(lum) > 0.75  # light to dark
    assert len({p.geometry for p in people}) == 48 and len({p.style for p in people}) == 48
    assert sum(p.appearance.glasses is not None for p in people) >= 5
    assert sum(p.appearance.mirror for p in people) == 24
    assert np.all(np.diff([skin_tone(x)[0] for x in np.linspace(0, 1, 9)]) < 0)
    rng = np.random.default_rng(0)
    assert len({text_for(p.language, rng, 6.0) for p in people}) == 48


def test_lip_width_tells_rounded_from_spread_at_equal_loudness(corpus: Path) -> None:
    widths: dict[int, list[float]] = {ROUNDED: [], SPREAD: []}
    for row in _rows(corpus):
        clip = (corpus / row["path"]).parent
        truth = np.load(clip / "truth.npz")
        wave, rate = sf.read(str(clip / "audio.wav"), dtype="float32")
        hop = rate // 25
        n = min(len(truth["yaw"]), len(wave) // hop)
        rms = np.sqrt(np.mean(wave[: n * hop].reshape(n, hop) ** 2, axis=1))
        lm = truth["landmarks"][:n].astype(np.float64)
        eyes = np.linalg.norm(lm[:, 263] - lm[:, 33], axis=1)  # head turns shorten both alike
        width = truth["lip_width"][:n] / eyes
        dominant = truth["dominant"][:n]
        voiced = rms > 0.25 * rms.max()
        lo, hi = np.percentile(rms[voiced], [20, 80])
        same_level = voiced & (rms >= lo) & (rms <= hi)
        for cls in widths:
            widths[cls] += list(width[same_level & (dominant == cls)])
    assert len(widths[ROUNDED]) >= 5 and len(widths[SPREAD]) >= 5
    assert np.median(widths[SPREAD]) > 1.15 * np.median(widths[ROUNDED])
