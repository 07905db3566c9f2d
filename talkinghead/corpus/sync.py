"""Audio-to-mouth lag: the shift that best lines the mouth opening up with the speech envelope."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ENVELOPE_RANGE_DB = 50.0  # the envelope floor sits this far under its loudest frame


@dataclass(frozen=True)
class SyncEstimate:
    """The measured lag (frames, positive: audio late) and how clearly it won."""

    lag: float  # sub-frame refined
    score: float  # the winning correlation, -1..1 (near 0: mouth and speech unrelated)
    scores: np.ndarray  # (2 * max_lag + 1,) correlation per integer lag, -max_lag first


def speech_envelope(wave: np.ndarray, num_frames: int, fps: int, rate: int) -> np.ndarray:
    """Log RMS level (dB) of each video frame's audio (T,), floored ENVELOPE_RANGE_DB under peak."""
    hop = rate / fps
    out = np.full(num_frames, -200.0)
    x = np.asarray(wave, dtype=np.float64)
    for i in range(num_frames):
        seg = x[round(i * hop) : round((i + 1) * hop)]
        if len(seg):
            out[i] = 10.0 * np.log10(float(np.mean(seg * seg)) + 1e-12)
    # Log level, not amplitude: it follows the syllable rhythm of quiet and loud speakers alike;
    # the floor keeps background hiss from carrying the correlation in pauses.
    return np.maximum(out, out.max() - ENVELOPE_RANGE_DB)


def _fill_nan(x: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaNs (edges take the nearest value); all-NaN gives zeros."""
    x = np.asarray(x, dtype=np.float64).copy()
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros_like(x)
    idx = np.arange(len(x))
    x[~ok] = np.interp(idx[~ok], idx[ok], x[ok])
    return x


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length series; 0 when either is constant."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 1e-12 else 0.0


def lag_scores(mouth: np.ndarray, envelope: np.ndarray, max_lag: int) -> np.ndarray:
    """Correlation of mouth[t] with envelope[t + lag] for lag in -max_lag..max_lag.

    Each score is the mean of the levels' correlation and their first differences'
    correlation: levels carry the slow open/closed rhythm, differences the onsets, and on real
    speech (where opening and loudness are related but not proportional) each rescues the
    other's blind spot.
    """
    m = _fill_nan(mouth)
    e = np.asarray(envelope, dtype=np.float64)
    n = min(len(m), len(e))
    m, e = m[:n], e[:n]
    dm, de = np.diff(m), np.diff(e)
    scores = np.zeros(2 * max_lag + 1)
    for k, lag in enumerate(range(-max_lag, max_lag + 1)):
        lo, hi = max(0, -lag), min(n, n - lag)
        if hi - lo < 4:
            continue
        level = _corr(m[lo:hi], e[lo + lag : hi + lag])
        dlo, dhi = max(0, -lag), min(n - 1, n - 1 - lag)
        onset = _corr(dm[dlo:dhi], de[dlo + lag : dhi + lag])
        scores[k] = 0.5 * (level + onset)
    return scores


def measure_lag(
    mouth: np.ndarray, wave: np.ndarray, fps: int, rate: int, max_lag: int = 6
) -> SyncEstimate:
    """Lag (frames) of `wave` behind `mouth` (T,) in -max_lag..max_lag; positive: audio late.

    `wave` covers the same frames as `mouth` (T / fps seconds at `rate`).
    """
    envelope = speech_envelope(wave, len(mouth), fps, rate)
    scores = lag_scores(mouth, envelope, max_lag)
    best = int(np.argmax(scores))
    lag = float(best - max_lag)
    if 0 < best < len(scores) - 1:  # parabola through the peak and its neighbours
        a, b, c = scores[best - 1], scores[best], scores[best + 1]
        den = a - 2.0 * b + c
        if den < 0:
            lag += float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return SyncEstimate(lag=lag, score=float(scores[best]), scores=scores)
