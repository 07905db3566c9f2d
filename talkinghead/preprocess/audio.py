"""Audio features aligned to video frames: a language-agnostic log-mel default, plug-in encoders.

Every encoder maps a 16 kHz mono waveform to one feature row per video frame, shape
(num_frames, dim). The renderer consumes a window of `2 * context` rows centred on each frame
(`windows`), like RAD-NeRF's 16-frame audio window.
"""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from talkinghead.media import MediaError, ffmpeg_exe

SAMPLE_RATE = 16_000
DEFAULT_CONTEXT = 8  # frames each side: windows of 16 frames (0.64 s at 25 fps)
BLOCK_ROWS = 2048  # spectrogram rows (20 s) computed at a time


def load_audio(path: Path) -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads to float32 16 kHz mono in [-1, 1]."""
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "-",
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if "matches no streams" in err or "does not contain any stream" in err:
            raise MediaError("no_audio_stream", f"{Path(path).name} has no audio stream")
        raise MediaError("unreadable_media", err[-500:] or "ffmpeg could not decode the audio")
    wave = np.frombuffer(proc.stdout, dtype="<i2").astype(np.float32)  # (N,)
    wave /= 32768.0  # in place: one float32 copy of a long recording, not two
    return wave


def read_wav(path: Path, start: int = 0, count: int | None = None) -> np.ndarray:
    """Samples [start, start+count) of a 16-bit mono 16 kHz WAV as float32 in [-1, 1].

    Reads only that stretch, straight into one float32 array (load_audio decodes the whole
    file and holds it twice over); any other file goes through load_audio.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            params = wav.getparams()
            if (params.nchannels, params.sampwidth, params.framerate) == (1, 2, SAMPLE_RATE):
                start = min(max(0, start), params.nframes)
                stop = params.nframes if count is None else min(params.nframes, start + count)
                out = np.empty(stop - start, dtype=np.float32)
                wav.setpos(start)
                for at in range(0, len(out), 1 << 20):
                    chunk = np.frombuffer(wav.readframes(min(1 << 20, len(out) - at)), "<i2")
                    out[at : at + len(chunk)] = chunk
                    if len(chunk) < min(1 << 20, len(out) - at):  # a truncated file
                        out = out[: at + len(chunk)]
                        break
                out /= 32768.0
                return out
    except (wave.Error, EOFError):
        pass
    whole = load_audio(path)
    return whole[start : None if count is None else start + count]


def audio_level_dbfs(wave: np.ndarray) -> float:
    """RMS level in dBFS (0 dB = full-scale square wave); -120.0 for silence or empty input."""
    if wave.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(wave.astype(np.float64)))))
    return max(-120.0, 20.0 * float(np.log10(max(rms, 1e-12))))


@runtime_checkable
class AudioEncoder(Protocol):
    """Waveform → one feature row per video frame."""

    name: str
    dim: int

    def encode(self, wave16k: np.ndarray, num_frames: int, fps: float = 25) -> np.ndarray:
        """Features (num_frames, dim) float32; row i describes video frame i's time span."""
        ...


def _frame_positions(
    n: int, rate: float, offset: float, num_frames: int, fps: float, subframes: int, first: int
) -> np.ndarray:
    """Fractional feature-row positions (T * S,) sampled for video frames [first, first + T)."""
    k = (np.arange(subframes, dtype=np.float64) + 0.5) / subframes  # (S,)
    index = np.arange(first, first + num_frames, dtype=np.float64)  # (T,)
    times = (index[:, None] + k[None, :]) / fps  # (T, S)
    return np.clip((times.reshape(-1) - offset) * rate, 0.0, max(n - 1, 0))  # (T*S,)


def _interpolate_rows(feats: np.ndarray, pos: np.ndarray, row0: int = 0) -> np.ndarray:
    """Rows of `feats` linearly interpolated at positions `pos` (K,), feats[0] being row0."""
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, row0 + len(feats) - 1)
    w = (pos - lo)[:, None]  # (K, 1)
    return feats[lo - row0] * (1.0 - w) + feats[hi - row0] * w  # (K, D)


def _mel_filterbank(n_mels: int, n_fft: int, sr: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-mel filters with Slaney area normalisation, shape (n_mels, n_fft // 2 + 1)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(fmin)), hz_to_mel(np.array(fmax)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1)
    up = (freqs[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    down = (upper - freqs[None, :]) / np.maximum(upper - centre, 1e-9)
    fb = np.maximum(0.0, np.minimum(up, down))  # (M, F)
    fb *= 2.0 / np.maximum(upper - lower, 1e-9)  # equal area per filter
    return fb.astype(np.float64)


class LogMelEncoder:
    """Language-agnostic default: utterance-normalised log-mel, pooled to video frames.

    Spectrogram: 25 ms Hann window (400 samples, FFT 512), 10 ms hop (100 Hz), `n_mels` bands
    from 20 Hz to 8 kHz, log10 power with an 80 dB floor below the utterance peak, then one
    scalar mean/std normalisation per utterance (loudness-invariant, keeps the spectral shape;
    silence maps to zeros). Each video frame gets `subframes` mel rows (exactly the 4 hops of a
    40 ms frame at 25 fps; interpolated at other rates) which are averaged (`dim = n_mels`) or,
    with `flatten=True`, concatenated (`dim = n_mels * subframes`).
    """

    def __init__(self, n_mels: int = 80, subframes: int = 4, flatten: bool = False) -> None:
        """Configure bands and pooling."""
        if n_mels < 1 or subframes < 1:
            raise ValueError("n_mels and subframes must be positive")
        self.n_mels = n_mels
        self.subframes = subframes
        self.flatten = flatten
        self.win = 400  # samples: 25 ms
        self.hop = 160  # samples: 10 ms
        self.n_fft = 512
        self.name = "logmel" if not flatten else f"logmel-x{subframes}"
        self.dim = n_mels * subframes if flatten else n_mels
        self._fb = _mel_filterbank(n_mels, self.n_fft, SAMPLE_RATE, 20.0, SAMPLE_RATE / 2)
        n = np.arange(self.win)
        self._window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.win)  # periodic Hann (win,)

    def _rows(self, wave: np.ndarray, n_rows: int, j0: int, j1: int) -> np.ndarray:
        """Raw log10 mel power (j1 - j0, n_mels) float64 of spectrogram rows [j0, j1).

        Row j spans samples [j*hop - 120, j*hop + 280) of `wave` (centre (j + 0.5) * hop),
        zero outside it and past row n_rows - 1's window.
        """
        lead = self.win // 2 - self.hop // 2
        total = (n_rows - 1) * self.hop + self.win
        body = min(wave.size, max(0, total - lead))  # samples of `wave` inside the padding
        a, b = j0 * self.hop - lead, (j1 - 1) * self.hop + self.win - lead  # wave coords
        segment = np.zeros(b - a, dtype=np.float64)
        lo, hi = max(a, 0), min(b, body)
        if hi > lo:
            segment[lo - a : hi - a] = wave[lo:hi]
        frames = np.lib.stride_tricks.sliding_window_view(segment, self.win)[:: self.hop]
        frames = frames[: j1 - j0] * self._window  # (n, win)
        power = np.abs(np.fft.rfft(frames, n=self.n_fft, axis=1)) ** 2  # (n, F)
        return np.asarray(np.log10(np.maximum(power @ self._fb.T, 1e-10)))  # (n, M)

    def _blocks(self, wave: np.ndarray, n_rows: int) -> Iterator[np.ndarray]:
        """Raw log-mel rows in blocks of BLOCK_ROWS."""
        for j0 in range(0, n_rows, BLOCK_ROWS):
            yield self._rows(wave, n_rows, j0, min(n_rows, j0 + BLOCK_ROWS))

    def _normaliser(self, wave: np.ndarray, n_rows: int) -> tuple[float, float, float]:
        """(floor, mean, scale) of the utterance: 80 dB below its peak, then mean/std.

        Computed over blocks (the spectrogram is made again for each statistic) so that
        memory does not grow with the recording's length.
        """
        floor = max(float(block.max()) for block in self._blocks(wave, n_rows)) - 8.0
        count = n_rows * self.n_mels
        mean = sum(float(np.maximum(b, floor).sum()) for b in self._blocks(wave, n_rows)) / count
        squares = (np.square(np.maximum(b, floor) - mean).sum() for b in self._blocks(wave, n_rows))
        var = sum(float(q) for q in squares) / count
        std = float(np.sqrt(var))
        return floor, mean, std if std > 1e-3 else 1.0

    def _n_rows(self, wave: np.ndarray, min_seconds: float) -> int:
        """Spectrogram rows for `wave`, at least `min_seconds` long."""
        need = max(wave.size, int(np.ceil(min_seconds * SAMPLE_RATE)))
        return max(1, int(np.ceil(need / self.hop)))

    def log_mel(self, wave16k: np.ndarray, min_seconds: float = 0.0) -> np.ndarray:
        """Normalised log-mel (N, n_mels) float32 at 100 Hz; row j centred at (j + 0.5) * 10 ms.

        Whole-signal STFT arrays are ~100x the waveform, so rows are made in blocks.
        """
        wave = np.asarray(wave16k).reshape(-1)
        n_rows = self._n_rows(wave, min_seconds)
        floor, mean, scale = self._normaliser(wave, n_rows)
        out = np.empty((n_rows, self.n_mels), dtype=np.float32)  # (N, M)
        for j0 in range(0, n_rows, BLOCK_ROWS):
            block = self._rows(wave, n_rows, j0, min(n_rows, j0 + BLOCK_ROWS))
            out[j0 : j0 + len(block)] = (np.maximum(block, floor) - mean) / scale
        return out

    def encode(self, wave16k: np.ndarray, num_frames: int, fps: float = 25) -> np.ndarray:
        """Features (num_frames, dim) float32; audio shorter than the video is padded with silence.

        Returns (num_frames, dim). The spectrogram is made block by block for blocks of video
        frames and never held whole.
        """
        if num_frames < 0 or fps <= 0:
            raise ValueError("num_frames must be >= 0 and fps > 0")
        if num_frames == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        wave = np.asarray(wave16k).reshape(-1)
        n_rows = self._n_rows(wave, num_frames / fps)
        floor, mean, scale = self._normaliser(wave, n_rows)
        rate = SAMPLE_RATE / self.hop  # 100 Hz
        out = np.empty((num_frames, self.dim), dtype=np.float32)  # (T, dim)
        step = max(1, BLOCK_ROWS // self.subframes)  # video frames per block
        for i0 in range(0, num_frames, step):
            count = min(step, num_frames - i0)
            pos = _frame_positions(n_rows, rate, 0.5 / rate, count, fps, self.subframes, i0)
            r0, r1 = int(np.floor(pos.min())), min(n_rows, int(np.floor(pos.max())) + 2)
            rows = (np.maximum(self._rows(wave, n_rows, r0, r1), floor) - mean) / scale
            mel = rows.astype(np.float32)  # as log_mel returns them
            sub = _interpolate_rows(mel, pos, r0).reshape(count, self.subframes, -1)
            out[i0 : i0 + count] = sub.reshape(count, -1) if self.flatten else sub.mean(axis=1)
        return out


class PretrainedSpeechEncoder:
    """HuBERT / wav2vec2 hidden states from a local `transformers` checkpoint (never downloads).

    The checkpoint directory holds what `save_pretrained` writes for the model (config.json and
    weights) and its feature extractor (preprocessor_config.json). The conv feature encoder's
    own geometry sets the state rate (stride 320 samples, 50 Hz, for HuBERT/wav2vec2): state j
    covers samples [j * stride, j * stride + field). Each video frame averages the states at
    2 instants inside it (at 25 fps: the 2 states of its 40 ms). Audio is run in chunks of
    `chunk_seconds` with `context_seconds` of neighbouring audio each side, so memory is
    bounded for long recordings and no chunk edge shifts the states.
    """

    def __init__(
        self,
        path: Path | None,
        layer: int = -1,
        chunk_seconds: float = 20.0,
        context_seconds: float = 2.0,
        device: str = "cpu",
    ) -> None:
        """Load the model and feature extractor from `path` with `local_files_only=True`."""
        if path is None:
            raise ValueError(
                "the pretrained audio encoder needs a local model directory "
                "(a HuBERT/wav2vec2 checkpoint saved with save_pretrained); none was given"
            )
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"pretrained audio encoder path {path} is not a directory")
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError("chunk_seconds must be > 0 and context_seconds >= 0")
        try:
            import torch
            from transformers import AutoFeatureExtractor, AutoModel
        except ImportError as exc:
            raise ImportError(
                "the pretrained audio encoder needs `torch` and `transformers`, which are not "
                "installed (pip install torch transformers); the default 'logmel' encoder "
                "needs neither"
            ) from exc
        self._torch: Any = torch
        try:
            self._extractor: Any = AutoFeatureExtractor.from_pretrained(
                str(path), local_files_only=True
            )
            self._model: Any = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot load a speech model from {path} (it needs config.json, the weights and "
                f"preprocessor_config.json, as save_pretrained writes them): {exc}"
            ) from exc
        config = self._model.config
        kernels, strides = (
            getattr(config, "conv_kernel", None),
            getattr(config, "conv_stride", None),
        )
        if not kernels or not strides or len(kernels) != len(strides):
            raise ValueError(
                f"{path} holds a {type(self._model).__name__}, not a wav2vec2-style speech "
                "model with a conv feature encoder (conv_kernel / conv_stride)"
            )
        rate = getattr(self._extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path} expects {rate} Hz audio; this encoder feeds {SAMPLE_RATE} Hz")
        self._convs = [(int(k), int(s)) for k, s in zip(kernels, strides, strict=True)]
        self.stride, self.field = 1, 1  # samples per state (320), samples each state sees (400)
        for kernel, stride in self._convs:
            self.field += (kernel - 1) * self.stride
            self.stride *= stride
        self._model.eval().to(device)
        if device == "cpu":
            self._model.float()  # fp16/bf16 checkpoints: CPU kernels want float32
        self._device = device
        self.layer = layer
        self.chunk_seconds = chunk_seconds
        self.context_seconds = context_seconds
        self.name = f"pretrained:{path.name}"
        self.dim = int(config.hidden_size)

    def _num_states(self, samples: int) -> int:
        """States the conv feature encoder makes from `samples` samples (0 if too short)."""
        n = samples
        for kernel, stride in self._convs:
            n = (n - kernel) // stride + 1 if n >= kernel else 0
        return n

    def _hidden(self, wave: np.ndarray) -> np.ndarray:
        """Hidden states (N, dim) float32 of one piece of audio, N = _num_states(len(wave))."""
        torch = self._torch
        inputs = self._extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        dtype = self._model.dtype
        inputs = {
            k: v.to(self._device, dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            out = self._model(**inputs, output_hidden_states=self.layer != -1)
        states = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return np.asarray(states[0].float().cpu().numpy(), dtype=np.float32)

    def _states(self, wave: np.ndarray, s0: int, s1: int, total: int) -> np.ndarray:
        """States [s0, s1) of the zero-padded `total`-sample signal, with context each side."""
        context = int(self.context_seconds * SAMPLE_RATE) // self.stride
        a = max(0, s0 - context)
        n_states = self._num_states(total)
        b = min(n_states, s1 + context)
        lo, hi = a * self.stride, (b - 1) * self.stride + self.field  # samples of states [a, b)
        if b == n_states:
            hi = total  # the tail that makes no state of its own still counts in normalisation
        piece = np.zeros(hi - lo, dtype=np.float32)
        have = wave[lo : min(hi, wave.size)]
        piece[: have.size] = have
        states = self._hidden(piece)  # (b - a, dim)
        return states[s0 - a : s1 - a]

    def encode(self, wave16k: np.ndarray, num_frames: int, fps: float = 25) -> np.ndarray:
        """Features (num_frames, dim) float32; audio shorter than the video is padded with silence.

        Video frames are encoded in blocks of `chunk_seconds`; only one block's states are held.
        """
        if num_frames < 0 or fps <= 0:
            raise ValueError("num_frames must be >= 0 and fps > 0")
        if num_frames == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        wave = np.asarray(wave16k, dtype=np.float32).reshape(-1)
        need = int(np.ceil(num_frames / fps * SAMPLE_RATE))
        total = max(wave.size, need, self.field)
        n_states = self._num_states(total)
        rate = SAMPLE_RATE / self.stride  # 50 Hz
        offset = 0.5 / rate  # state j stands for samples [j * stride, (j + 1) * stride)
        out = np.empty((num_frames, self.dim), dtype=np.float32)  # (T, dim)
        step = max(1, int(self.chunk_seconds * fps))  # video frames per block
        for i0 in range(0, num_frames, step):
            count = min(step, num_frames - i0)
            pos = _frame_positions(n_states, rate, offset, count, fps, 2, i0)  # (count * 2,)
            s0, s1 = int(np.floor(pos.min())), min(n_states, int(np.floor(pos.max())) + 2)
            states = self._states(wave, s0, s1, total)  # (s1 - s0, dim)
            sub = _interpolate_rows(states, pos, s0).reshape(count, 2, self.dim)
            out[i0 : i0 + count] = sub.mean(axis=1)
        return out


def encoder_from_name(name: str = "logmel", path: Path | None = None) -> AudioEncoder:
    """Build an encoder: 'logmel' (default, no weights) or 'pretrained' (needs a local `path`)."""
    key = name.strip().lower()
    if key in ("logmel", "log-mel", "mel"):
        return LogMelEncoder()
    if key in ("pretrained", "hubert", "wav2vec2"):
        if path is None:
            raise ValueError(
                f"audio encoder {name!r} needs a local model path "
                "(PreprocessConfig.audio_encoder_path); nothing is ever downloaded"
            )
        return PretrainedSpeechEncoder(path)
    raise ValueError(f"unknown audio encoder {name!r}; choose 'logmel' or 'pretrained'")


def windows(features: np.ndarray, context: int = DEFAULT_CONTEXT) -> np.ndarray:
    """Edge-padded windows (T, 2*context, dim) where row i holds frames [i - context, i + context).

    Returns a read-only strided view over one padded copy (no T x 2*context copy).
    """
    if context < 1:
        raise ValueError("context must be >= 1")
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"features must be (T, dim), got shape {feats.shape}")
    if feats.shape[0] == 0:
        return np.zeros((0, 2 * context, feats.shape[1]), dtype=feats.dtype)
    padded = np.pad(feats, ((context, context - 1), (0, 0)), mode="edge")  # (T + 2c - 1, D)
    view = np.lib.stride_tricks.sliding_window_view(padded, 2 * context, axis=0)  # (T, D, 2c)
    return view.transpose(0, 2, 1)


def window_at(features: np.ndarray, index: int, context: int = DEFAULT_CONTEXT) -> np.ndarray:
    """The edge-padded window (2*context, dim) of one frame; reads only those rows (memmap-safe)."""
    rows = np.clip(np.arange(index - context, index + context), 0, len(features) - 1)
    return np.asarray(features[rows])
