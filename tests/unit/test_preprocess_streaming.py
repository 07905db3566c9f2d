"""Bounded-memory plumbing of the preprocessing pipeline: spool, read-ahead, worker, npy stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from talkinghead.media import iter_frames, probe, synth_face_video
from talkinghead.preprocess.ingest import normalise, normalised_frames, normalised_size
from talkinghead.preprocess.manifest import DatasetWriter
from talkinghead.preprocess.pose import (
    PoseSolver,
    estimate_poses,
    euler_to_rotation,
    intrinsics,
    reference_shape,
)
from talkinghead.preprocess.streaming import OrderedWorker, RowSpool, prefetch
from talkinghead.preprocess.tracking import gap_plan, gap_points, interpolate_gaps


def test_row_spool_round_trip(tmp_path: Path) -> None:
    spool = RowSpool(tmp_path / "rows.f32", (4, 3))
    rows = np.arange(10 * 12, dtype=np.float32).reshape(10, 4, 3)
    assert [spool.append(r) for r in rows] == list(range(10))
    assert np.array_equal(spool.read(np.array([3, 4, 5, 0, 9, 9])), rows[[3, 4, 5, 0, 9, 9]])
    assert spool.read(np.array([], dtype=np.int64)).shape == (0, 4, 3)
    with pytest.raises(IndexError):
        spool.read([10])
    with pytest.raises(ValueError):
        spool.append(np.zeros((3, 4)))
    spool.close()
    assert not (tmp_path / "rows.f32").exists()


def test_prefetch_keeps_order_and_reraises() -> None:
    assert list(prefetch(range(100), depth=3)) == list(range(100))

    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("decoder broke")

    got = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1]


def test_prefetch_stops_its_producer_when_the_consumer_stops() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # type: ignore[attr-defined]
    assert closed.wait(5.0)


def test_ordered_worker_runs_in_order_and_reraises() -> None:
    seen: list[int] = []
    with OrderedWorker(seen.append, depth=2) as worker:
        for i in range(50):
            worker.submit(i)
    assert seen == list(range(50))

    def boom(i: int) -> None:
        if i == 3:
            raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"), OrderedWorker(boom, depth=2) as worker:
        for i in range(20):
            worker.submit(i)


def test_gap_points_match_interpolate_gaps() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 5, 3)).astype(np.float32)
    found = np.ones(40, dtype=bool)
    found[[0, 5, 6, 7, 20, 21, 22, 23, 24, 39]] = False  # lead, short gap, long gap, tail
    want, valid = interpolate_gaps(points, found, max_gap=4)
    plan = gap_plan(found, max_gap=4)
    assert np.array_equal(plan.valid, valid)
    frames = np.array([6, 1, 22, 7, 5, 0, 39])  # any order, any subset
    got = gap_points(plan, frames, lambda idx: points[idx])
    assert np.array_equal(got, want[frames], equal_nan=True)
    assert np.isnan(got[2]).all() and not np.isnan(got[0]).any()


def test_pose_solver_streams_estimate_poses() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(scale=0.05, size=(478, 3)).astype(np.float32)
    K = intrinsics(256, 256)
    euler = np.stack([np.linspace(-20, 20, 12), np.linspace(10, -10, 12), np.zeros(12)], 1)
    cam = ref[None] @ np.swapaxes(euler_to_rotation(euler), 1, 2) + [0.0, 0.0, 0.6]  # (T, N, 3)
    img = cam @ K.T
    points = np.concatenate([img[..., :2] / img[..., 2:], cam[..., 2:]], axis=-1)
    valid = np.ones(12, dtype=bool)
    valid[4] = False
    batch = estimate_poses(points, valid, K, reference_shape(ref))
    solver = PoseSolver(K, reference_shape(ref))
    for t in range(12):
        pose = solver.solve(points[t] if valid[t] else None)
        assert (pose is None) == (not batch.valid[t])
        if pose is not None:
            assert np.array_equal(pose[0], batch.rotation[t])
            assert np.array_equal(pose[1], batch.translation[t])


def test_array_stream_writes_a_plain_npy(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds", size=8, fps=25)
    data = np.arange(5 * 478 * 3, dtype=np.float32).reshape(5, 478, 3)
    with writer.array_stream("landmarks", 5, (478, 3), "float32") as stream:
        stream.write(data[:2])
        stream.write(data[2:])
    assert np.array_equal(np.load(tmp_path / "ds" / "landmarks.npy"), data)
    with (
        pytest.raises(ValueError, match="rows written"),
        writer.array_stream("euler", 3, (3,), "float32") as stream,
    ):
        stream.write(np.zeros((2, 3)))
    assert not (tmp_path / "ds" / "euler.npy").exists()
    with pytest.raises(ValueError):
        writer.array_stream("landmarks", 5, (468, 3), "float32")


def test_normalised_frames_are_the_normalised_video(tmp_path: Path) -> None:
    src = synth_face_video(tmp_path / "in.mp4", seconds=4.4, size=256)
    size = normalised_size(probe(src), 4096)
    frames = [f[::4, ::4].astype(np.int16) for f in normalised_frames(src, size)]
    info = normalise(src, tmp_path / "v.mp4", tmp_path / "a.wav")
    assert info.video is not None and (info.video.width, info.video.height) == size
    assert len(frames) == info.video.frames and frames[0].shape == (64, 64, 3)
    # The file's frames are the CRF-16 reconstruction of these: compression noise apart, equal.
    decoded = [f[::4, ::4].astype(np.int16) for f in iter_frames(tmp_path / "v.mp4", 4096)]
    err = np.mean([np.abs(a - b).mean() for a, b in zip(frames, decoded, strict=True)])
    assert err < 3.0
    part = [f[::4, ::4].astype(np.int16) for f in normalised_frames(src, size, 30, 7)]
    assert len(part) == 7
    assert all(np.array_equal(a, b) for a, b in zip(part, frames[30:37], strict=True))
    stream = normalised_frames(src, size)
    next(stream)
    stream.close()  # type: ignore[attr-defined]  # stops ffmpeg without an error


def test_normalised_frames_report_unreadable_media(tmp_path: Path) -> None:
    from talkinghead.media import MediaError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4000))
    with pytest.raises(MediaError) as info:
        list(normalised_frames(bad, (64, 64)))
    assert info.value.code == "unreadable_media"


def test_read_wav_reads_a_stretch_like_load_audio(tmp_path: Path) -> None:
    from talkinghead.media import synth_tone
    from talkinghead.preprocess.audio import load_audio, read_wav

    tone = synth_tone(tmp_path / "t.wav", seconds=2.0, frequency=300)
    whole = load_audio(tone)
    assert np.array_equal(read_wav(tone), whole)
    assert np.array_equal(read_wav(tone, 1000, 5000), whole[1000:6000])
    assert len(read_wav(tone, len(whole) - 10, 100)) == 10
    video = synth_face_video(tmp_path / "v.mp4", seconds=1.0, size=64)  # not a WAV: decoded
    assert read_wav(video, 0, 800).shape == (800,)


def test_blockwise_log_mel_equals_the_whole_signal_formula() -> None:
    from talkinghead.preprocess.audio import BLOCK_ROWS, LogMelEncoder

    rng = np.random.default_rng(2)
    seconds = 1.5 * BLOCK_ROWS / 100  # spans two blocks
    envelope = np.repeat(rng.random(int(seconds * 10)), 1600)
    wave = (rng.normal(size=envelope.size) * envelope).astype(np.float32)
    enc = LogMelEncoder()
    # The formula on the whole signal at once (what the encoder computed before blocks).
    lead = enc.win // 2 - enc.hop // 2
    n = int(np.ceil(wave.size / enc.hop))
    padded = np.zeros((n - 1) * enc.hop + enc.win)
    body = wave[: padded.size - lead]
    padded[lead : lead + body.size] = body
    frames = np.lib.stride_tricks.sliding_window_view(padded, enc.win)[:: enc.hop][:n]
    power = np.abs(np.fft.rfft(frames * enc._window, n=enc.n_fft, axis=1)) ** 2
    logmel = np.log10(np.maximum(power @ enc._fb.T, 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 8.0)
    want = ((logmel - logmel.mean()) / logmel.std()).astype(np.float32)
    got = enc.log_mel(wave)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    feats = enc.encode(wave, n // 4)  # 4 mel rows per 25 fps frame
    assert np.abs(feats - got[: n // 4 * 4].reshape(-1, 4, enc.n_mels).mean(axis=1)).max() < 1e-5
