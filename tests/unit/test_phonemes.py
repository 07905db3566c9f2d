"""Phoneme timing from libespeak-ng and the coarticulated viseme weights built from it."""

from __future__ import annotations

import numpy as np
import pytest

from talkinghead.corpus.phonemes import (
    CLOSED,
    VISEMES,
    Phone,
    Utterance,
    coarticulate,
    synthesize,
    viseme_of,
    viseme_weights,
)
from talkinghead.media import MediaError


@pytest.fixture(scope="module")
def mama() -> Utterance:
    """The word "mama", spoken once for the module."""
    return synthesize("mama", "en")


def test_events_are_ordered_and_inside_the_audio(mama: Utterance) -> None:
    utt = synthesize("The quick brown fox. Jumps over the lazy dog.", "en+f2")
    assert utt.sample_rate == 16000 and utt.wave.dtype == np.float32
    assert 1.5 < utt.duration_s < 6.0
    assert np.abs(utt.wave).max() > 0.05
    starts = np.array([p.start_s for p in utt.phones])
    ends = np.array([p.end_s for p in utt.phones])
    assert len(utt.phones) > 20
    assert np.all(np.diff(starts) > 0) and np.all(ends > starts)
    assert np.allclose(starts[1:], ends[:-1])  # contiguous: each ends where the next starts
    assert starts[0] >= 0.0 and ends[-1] <= utt.duration_s + 1e-6


def test_m_in_mama_is_closed_and_dominates_its_frames(mama: Utterance) -> None:
    phones = mama.phones
    ms = [p for p in phones if p.phoneme == "m"]
    assert len(ms) == 2 and all(viseme_of(p.phoneme) == "closed" for p in ms)
    assert viseme_of("a") == "open" and viseme_of("u:") == "rounded"
    assert viseme_of("i:") == "spread" and viseme_of("_:") == "neutral"
    n = int(mama.duration_s * 25) + 1
    art = coarticulate(phones, n, lag_s=0.0, smooth_s=0.02)
    second = ms[1]
    frame = int((second.start_s + second.end_s) / 2 * 25)
    assert art.dominant[frame] == CLOSED


def test_weights_sum_to_one_and_anticipate_the_next_phoneme() -> None:
    phones = [Phone(0.0, 0.4, "i:"), Phone(0.4, 0.8, "u:")]
    late = viseme_weights(phones, 25, lag_s=0.0)
    early = viseme_weights(phones, 25, lag_s=0.08)
    for w in (late, early):
        assert w.shape == (25, len(VISEMES))
        assert np.allclose(w.sum(axis=1), 1.0, atol=1e-5)
    rounded = VISEMES.index("rounded")
    # frame 8 covers 0.32-0.36 s: with anticipation the lips already round for the /u:/
    assert early[8, rounded] > late[8, rounded] + 0.3
    assert np.argmax(late[3]) == VISEMES.index("spread")
    assert np.argmax(late[-3]) == VISEMES.index("neutral")  # after the speech: silence


def test_synthesis_is_deterministic(mama: Utterance) -> None:
    again = synthesize("mama", "en")
    assert np.array_equal(again.wave, mama.wave)
    assert again.phones == mama.phones


def test_unknown_voice_fails_cleanly() -> None:
    with pytest.raises(MediaError) as info:
        synthesize("hello", "no-such-voice")
    assert info.value.code == "tts_failed"
