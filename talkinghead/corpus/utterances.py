"""Energy-based voice activity on 16 kHz audio and the split of a segment into utterances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOP_S = 0.01  # VAD resolution
RANGE_DB = 35.0  # speech is within this of the loud (95th percentile) level ...
FLOOR_MARGIN_DB = 10.0  # ... and this far above the noise floor (10th percentile)
MIN_LEVEL_DBFS = -60.0  # never speech below this, whatever the recording's level
MIN_BURST_S = 0.05  # voiced runs shorter than this are clicks, not speech
PAD_S = 0.1  # silence kept around an utterance (never more than half the pause)


@dataclass(frozen=True)
class Span:
    """A stretch of the segment's audio, seconds from the segment's start."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.end - self.start


def hop_levels(wave: np.ndarray, rate: int) -> np.ndarray:
    """RMS level in dBFS of each HOP_S hop of the mono float signal: (H,)."""
    hop = max(1, round(HOP_S * rate))
    n = len(wave) // hop
    x = np.asarray(wave[: n * hop], dtype=np.float64).reshape(n, hop)
    x = x - x.mean()  # DC is not sound (mean of the whole stretch: hops keep their dips)
    return 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)


def voiced(levels: np.ndarray) -> np.ndarray:
    """(H,) bool: hops loud enough to be speech (thresholds relative to the stretch itself)."""
    if len(levels) == 0:
        return np.zeros(0, bool)
    loud, floor = np.percentile(levels, [95, 10])
    threshold = max(loud - RANGE_DB, floor + FLOOR_MARGIN_DB, MIN_LEVEL_DBFS)
    on = levels > threshold
    return _drop_short(on, True, round(MIN_BURST_S / HOP_S))


def _runs(mask: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """Half-open [a, b) runs where mask == value."""
    padded = np.concatenate([[False], mask == value, [False]]).astype(np.int8)
    edges = np.nonzero(np.diff(padded))[0]
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _drop_short(mask: np.ndarray, value: bool, min_len: int) -> np.ndarray:
    """Flip runs of `value` shorter than min_len."""
    out = mask.copy()
    for a, b in _runs(mask, value):
        if b - a < min_len:
            out[a:b] = not value
    return out


def speech_spans(wave: np.ndarray, rate: int, min_pause_s: float) -> list[Span]:
    """Speech between pauses of at least `min_pause_s` (shorter pauses stay inside a span)."""
    on = voiced(hop_levels(wave, rate))
    # Pauses shorter than min_pause_s, interior ones only, are part of the speech.
    bridged = on.copy()
    for a, b in _runs(on, False):
        if a > 0 and b < len(on) and (b - a) * HOP_S < min_pause_s:
            bridged[a:b] = True
    return [Span(a * HOP_S, b * HOP_S) for a, b in _runs(bridged, True)]


def _split_long(span: Span, levels: np.ndarray, min_s: float, max_s: float) -> list[Span]:
    """Cut a span longer than max_s at its quietest hops, keeping every piece >= min_s."""
    if span.duration <= max_s:
        return [span]
    lo = round((span.start + min_s) / HOP_S)
    hi = round((span.end - min_s) / HOP_S)
    if hi <= lo:
        return [span]
    # Smoothed, so the cut lands in a dip between words rather than on one quiet hop.
    smooth = np.convolve(levels, np.ones(9) / 9.0, mode="same")
    cut = (lo + int(np.argmin(smooth[lo:hi]))) * HOP_S
    left, right = Span(span.start, cut), Span(cut, span.end)
    return _split_long(left, levels, min_s, max_s) + _split_long(right, levels, min_s, max_s)


def plan_utterances(
    wave: np.ndarray, rate: int, min_s: float, max_s: float, min_pause_s: float
) -> tuple[list[Span], list[Span]]:
    """(utterances, dropped fragments) of a segment's audio, seconds from its start.

    Split at every pause >= min_pause_s; a piece shorter than min_s joins the neighbour across
    the shorter pause if the result stays <= max_s, else it is dropped; a piece longer than
    max_s is cut at its quietest moments. Utterances keep up to PAD_S of the pause around them.
    """
    total = len(wave) / rate
    levels = hop_levels(wave, rate)
    pieces = speech_spans(wave, rate, min_pause_s)
    merged = True
    while merged:  # join the shortest short piece first, until nothing more can join
        merged = False
        order = sorted(range(len(pieces)), key=lambda i: pieces[i].duration)
        for i in order:
            if pieces[i].duration >= min_s:
                break
            options = []
            if i > 0:
                options.append((pieces[i].start - pieces[i - 1].end, i - 1))
            if i + 1 < len(pieces):
                options.append((pieces[i + 1].start - pieces[i].end, i + 1))
            for _, j in sorted(options):
                a, b = min(i, j), max(i, j)
                joined = Span(pieces[a].start, pieces[b].end)
                if joined.duration <= max_s:
                    pieces[a : b + 1] = [joined]
                    merged = True
                    break
            if merged:
                break
    kept: list[Span] = []
    dropped: list[Span] = []
    for piece in pieces:
        (kept if piece.duration >= min_s else dropped).append(piece)
    parts = [part for piece in kept for part in _split_long(piece, levels, min_s, max_s)]
    out: list[Span] = []
    for k, part in enumerate(parts):
        before = parts[k - 1].end if k > 0 else -PAD_S
        after = parts[k + 1].start if k + 1 < len(parts) else total + PAD_S
        start = max(part.start - PAD_S, 0.5 * (before + part.start), 0.0)
        end = min(part.end + PAD_S, 0.5 * (part.end + after), total, start + max_s)
        out.append(Span(start, end))
    return out, dropped
