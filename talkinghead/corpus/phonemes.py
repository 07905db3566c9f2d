"""Speech with a phoneme timeline from libespeak-ng (ctypes), and coarticulated viseme weights.

libespeak-ng is driven in synchronous mode with phoneme events switched on: the synth callback
receives 22050 Hz int16 samples and events whose `audio_position` (ms) marks where each phoneme
starts. The library is initialised once per process. Its synthesiser keeps state from one call
to the next (the pitch flutter runs on), so the same text would not give the same samples
twice; each synthesis therefore runs in a forked child of the initialised process, which
starts from the untouched state, and sends its samples and events back through a pipe.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from talkinghead.media import MediaError

SAMPLE_RATE = 16000
FPS = 25
VISEMES = ("neutral", "closed", "rounded", "spread", "open")
NEUTRAL, CLOSED, ROUNDED, SPREAD, OPEN = range(5)
SILENCE = 5  # internal sixth class: folded into `neutral` in the published weights

# speak_lib.h constants (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # an error must come back to us, not end the process
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_ESPEAK_RATE = 22050

# Cohen-Massaro style dominance: bilabial closure is never skipped, neutral consonants yield.
_DOMINANCE = np.array([0.6, 3.0, 1.6, 1.3, 1.0, 0.9])


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Phone:
    """One phoneme of the timeline (espeak-ng mnemonic), seconds from the start of the wave."""

    start_s: float
    end_s: float
    phoneme: str


@dataclass(frozen=True)
class Utterance:
    """Synthesised speech: float32 mono samples at SAMPLE_RATE and its phoneme timeline."""

    wave: np.ndarray
    phones: tuple[Phone, ...]
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        """Length of the wave in seconds."""
        return len(self.wave) / self.sample_rate


@dataclass(frozen=True)
class Articulation:
    """Per-frame coarticulated viseme weights (T, 5), rows summing to 1, and speech activity."""

    weights: np.ndarray  # (T, 5) float32 in VISEMES order
    speaking: np.ndarray  # (T,) float32: 1 - weight of silence (pauses count as neutral)
    classes: np.ndarray  # (T, 6) float32: the five visemes and silence, before folding

    @property
    def dominant(self) -> np.ndarray:
        """Index of the heaviest viseme per frame: (T,) int64."""
        return np.argmax(self.weights, axis=1)


class _Engine:
    """The process-wide libespeak-ng handle and the buffers its callback fills."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as exc:
            raise MediaError("tts_failed", f"libespeak-ng.so.1 is not installed: {exc}") from exc
        self.lock = threading.Lock()
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, str]] = []
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, options)
        if rate != _ESPEAK_RATE:
            raise MediaError("tts_failed", f"espeak-ng failed to initialise (got {rate})")
        self.callback = _Callback(self._collect)  # kept referenced: the library holds a pointer
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav: Any, n: int, events: Any) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                self.events.append((int(ev.audio_position), ev.id.string.decode(errors="replace")))
            i += 1
        return 0


@lru_cache(maxsize=1)
def _engine() -> _Engine:
    return _Engine()


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50) -> Utterance:
    """Speak `text` with an espeak-ng voice ("en", "de+f2"); rate in words/min, pitch 0..100."""
    engine = _engine()
    with engine.lock:
        code, raw, events = _in_child(engine, text, voice, int(rate), int(pitch))
    if code == _NO_VOICE:
        raise MediaError("tts_failed", f"espeak-ng has no voice {voice!r}")
    if code != 0 or len(raw) == 0:
        raise MediaError("tts_failed", f"espeak-ng could not speak {text[:40]!r} (code {code})")
    from scipy.signal import resample_poly

    samples = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
    wave = resample_poly(samples, SAMPLE_RATE, _ESPEAK_RATE).astype(np.float32)
    duration = len(wave) / SAMPLE_RATE
    return Utterance(wave=wave, phones=_timeline(events, duration))


_NO_VOICE = -100


def _speak(engine: _Engine, text: str, voice: str, rate: int, pitch: int) -> int:
    """Run one synthesis into the engine's buffers; an espeak error code, 0 when it worked."""
    if engine.lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0:
        return _NO_VOICE
    engine.lib.espeak_SetParameter(_RATE, rate, 0)
    engine.lib.espeak_SetParameter(_PITCH, pitch, 0)
    data = text.encode("utf-8")
    return int(
        engine.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    )


def _in_child(
    engine: _Engine, text: str, voice: str, rate: int, pitch: int
) -> tuple[int, bytes, list[tuple[int, str]]]:
    """`_speak` in a forked child: (code, int16 sample bytes, events), the parent untouched."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: speak, send the result, leave without running the parent's cleanup
        status = 1
        try:
            os.close(read_fd)
            engine.chunks, engine.events = [], []
            code = _speak(engine, text, voice, rate, pitch)
            raw = b"".join(c.astype(np.int16).tobytes() for c in engine.chunks)
            with os.fdopen(write_fd, "wb") as out:
                out.write(pickle.dumps((code, raw, engine.events)))
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        payload = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        raise MediaError("tts_failed", f"the espeak-ng worker failed (status {status})")
    code, raw, events = pickle.loads(payload)  # our own child's bytes, never outside input
    return int(code), bytes(raw), list(events)


def _timeline(events: list[tuple[int, str]], duration: float) -> tuple[Phone, ...]:
    """Phones from (start ms, mnemonic) events: each ends where the next starts."""
    events = sorted(events, key=lambda e: e[0])
    phones = []
    for k, (ms, name) in enumerate(events):
        start = min(ms / 1000.0, duration)
        end = min(events[k + 1][0] / 1000.0, duration) if k + 1 < len(events) else duration
        if end > start:  # markers sharing a position with the next phoneme carry no time
            phones.append(Phone(start, end, name))
    return tuple(phones)


def viseme_class(phoneme: str) -> int:
    """Internal class of an espeak-ng mnemonic: a VISEMES index, or SILENCE for pauses."""
    p = phoneme.lstrip("',%=")  # stress marks
    if not p or p.startswith("_"):
        return SILENCE
    head = p[0]
    if head in "pbm":
        return CLOSED
    if head in "oOuUwyY29W" or p.startswith("@U"):
        return ROUNDED
    if head in "iIeEj":
        return SPREAD
    if head in "aA&V0":
        return OPEN
    return NEUTRAL


def viseme_of(phoneme: str) -> str:
    """Viseme name (one of VISEMES) of an espeak-ng mnemonic; pauses are `neutral`."""
    cls = viseme_class(phoneme)
    return VISEMES[NEUTRAL if cls == SILENCE else cls]


def coarticulate(
    phones: tuple[Phone, ...] | list[Phone],
    n_frames: int,
    fps: int = FPS,
    lag_s: float = 0.06,
    smooth_s: float = 0.035,
    offset_s: float = 0.0,
) -> Articulation:
    """Viseme weights per frame: targets seen `lag_s` ahead, dominance-weighted and smoothed.

    `offset_s` is where the phones' time zero falls in the clip (the timeline is shifted by it);
    frames outside every phone are silence.
    """
    step = 0.005
    t = np.arange(round(n_frames / fps / step)) * step + 0.5 * step
    cls = np.full(len(t), SILENCE, np.int64)
    look = t + lag_s  # anticipation: the lips already head for what is said `lag_s` later
    for ph in phones:
        inside = (look >= ph.start_s + offset_s) & (look < ph.end_s + offset_s)
        cls[inside] = viseme_class(ph.phoneme)
    grid = np.zeros((len(t), 6))
    grid[np.arange(len(t)), cls] = _DOMINANCE[cls]
    if smooth_s > 0:
        from scipy.ndimage import gaussian_filter1d

        grid = gaussian_filter1d(grid, smooth_s / step, axis=0, mode="nearest")
    grid /= np.maximum(grid.sum(axis=1, keepdims=True), 1e-12)
    per_frame = round(1.0 / fps / step)
    usable = min(n_frames * per_frame, len(grid))
    frames = grid[:usable].reshape(-1, per_frame, 6).mean(axis=1)
    if len(frames) < n_frames:  # rounding left the last frame(s) without grid rows
        pad = np.zeros((n_frames - len(frames), 6))
        pad[:, SILENCE] = 1.0
        frames = np.vstack([frames, pad])
    speaking = 1.0 - frames[:, SILENCE]
    weights = frames[:, :5].copy()
    weights[:, NEUTRAL] += frames[:, SILENCE]
    return Articulation(
        weights=weights.astype(np.float32),
        speaking=speaking.astype(np.float32),
        classes=frames.astype(np.float32),
    )


def viseme_weights(
    phones: tuple[Phone, ...] | list[Phone],
    n_frames: int,
    fps: int = FPS,
    lag_s: float = 0.06,
    smooth_s: float = 0.035,
) -> np.ndarray:
    """Coarticulated viseme weights (T, 5) in VISEMES order; rows sum to 1."""
    return coarticulate(phones, n_frames, fps, lag_s, smooth_s).weights
