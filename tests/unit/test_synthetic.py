"""The synthetic talking-head generator: files, codecs, truth, and what mediapipe sees."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from talkinghead.synthetic import SyntheticClip, generate


def _frames(path: Path) -> list[np.ndarray]:
    """All RGB frames of a video."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """One default 8 s clip, made once for the module."""
    return generate(tmp_path_factory.mktemp("synthetic"), seconds=8.0)


@pytest.fixture(scope="module")
def truth(clip: SyntheticClip) -> dict[str, np.ndarray]:
    """The clip's per-frame truth."""
    return dict(np.load(clip.truth))


def test_files_and_streams(clip: SyntheticClip) -> None:
    assert clip.video.is_file() and clip.truth.is_file() and clip.audio.is_file()
    with av.open(str(clip.video)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (512, 512)
        assert float(video.average_rate) == pytest.approx(25.0)
        assert audio.codec_context.name == "aac"
        frames = sum(1 for _ in container.decode(video=0))
    assert abs(frames - 200) <= 1
    info = sf.info(str(clip.audio))
    assert info.samplerate == 16000 and info.channels == 1
    assert info.duration == pytest.approx(8.0, abs=0.05)


def test_truth_arrays_and_pose_ranges(truth: dict[str, np.ndarray]) -> None:
    n = 200
    keys = ("yaw", "pitch", "roll", "tx", "ty", "mouth_open", "eye_open", "still")
    for key in keys:
        assert truth[key].shape == (n,), key
    assert int(truth["fps"]) == 25 and int(truth["size"]) == 512
    for key, reach, limit in (("yaw", 20, 25), ("pitch", 12, 15), ("roll", 8, 10)):
        values = truth[key]
        assert values.max() >= reach and values.min() <= -reach, key
        assert np.abs(values).max() <= limit, key
    assert truth["mouth_open"].min() >= 0.0 and truth["mouth_open"].max() <= 1.0
    assert truth["eye_open"].min() < 0.1 and np.median(truth["eye_open"]) == 1.0


def test_pose_is_constant_while_still(truth: dict[str, np.ndarray]) -> None:
    still = truth["still"].astype(bool)
    assert still.sum() == round(1.5 * 25)
    assert not still[-1]
    for key in ("yaw", "pitch", "roll", "tx", "ty"):
        assert np.ptp(truth[key][still]) == 0.0, key
        assert np.ptp(truth[key][~still]) > 1.0, key


def test_mouth_follows_the_audio_envelope(
    clip: SyntheticClip, truth: dict[str, np.ndarray]
) -> None:
    with av.open(str(clip.video)) as container:
        chunks = [f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    wave = np.concatenate(chunks)
    hop = rate // 25
    n = min(len(wave) // hop, 200)
    rms = np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    r = np.corrcoef(rms, truth["mouth_open"][:n])[0, 1]
    assert r >= 0.8
    quiet = rms < 0.02 * rms.max()
    if quiet.any():
        assert truth["mouth_open"][:n][quiet].mean() < 0.05  # closed while silent


def test_mediapipe_tracks_the_face(clip: SyntheticClip) -> None:
    import mediapipe as mp

    frames = _frames(clip.video)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, refine_landmarks=True, max_num_faces=1
    ) as mesh:
        found = [mesh.process(f).multi_face_landmarks is not None for f in frames]
    assert np.mean(found) >= 0.98


def test_identity_one_is_another_person(tmp_path: Path) -> None:
    a = _frames(generate(tmp_path / "a", seconds=0.4, audio=False, identity=0).video)[0]
    b = _frames(generate(tmp_path / "b", seconds=0.4, audio=False, identity=1).video)[0]
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()
    assert diff > 30.0
    # the face region itself differs too, not only the background
    centre = np.s_[150:300, 180:330]
    assert np.abs(a[centre].astype(np.float32) - b[centre].astype(np.float32)).mean() > 20.0


def test_second_face_is_smaller(tmp_path: Path) -> None:
    import mediapipe as mp

    frame = _frames(generate(tmp_path, seconds=0.4, audio=False, second_face=True).video)[-1]
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=2
    ) as mesh:
        faces = mesh.process(frame).multi_face_landmarks
    assert faces is not None and len(faces) == 2
    widths = []
    for face in faces:
        xs = np.array([p.x for p in face.landmark])
        ys = np.array([p.y for p in face.landmark])
        widths.append((np.ptp(xs), xs.mean(), ys.mean()))
    big, small = sorted(widths, reverse=True)
    assert small[0] < 0.6 * big[0]
    assert small[1] < 0.3 and small[2] < 0.3  # the small one sits in the top-left corner
    assert 0.3 < big[1] < 0.7


def test_no_audio_stream_when_disabled(tmp_path: Path) -> None:
    made = generate(tmp_path, seconds=0.4, audio=False)
    with av.open(str(made.video)) as container:
        assert not container.streams.audio
        assert len(container.streams.video) == 1
    assert made.audio.is_file()
