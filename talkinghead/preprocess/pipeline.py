"""Video to dataset in two streaming passes: track the face, then crop, segment and write."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from talkinghead.media import MediaError, iter_frames, probe
from talkinghead.preprocess.audio import audio_level_dbfs, encoder_from_name, load_audio
from talkinghead.preprocess.features import eye_openness, face_bbox, lips_bbox, mouth_openness
from talkinghead.preprocess.ingest import IngestLimits, check_source, normalise
from talkinghead.preprocess.landmarks import FaceMeshDetector
from talkinghead.preprocess.manifest import DatasetWriter, Manifest, make_split
from talkinghead.preprocess.masks import (
    BackgroundPlate,
    PersonSegmenter,
    mask_coverage,
    semantic_labels,
)
from talkinghead.preprocess.pose import (
    estimate_poses,
    intrinsics,
    poses_to_matrices,
    reference_shape,
    smooth_poses,
)
from talkinghead.preprocess.tracking import (
    consistent_segments,
    find_cuts,
    fixed_crop,
    frame_signature,
    identity_descriptor,
    interpolate_gaps,
    select_main_subject,
)

Progress = Callable[[str, float], None]
MAX_DECODE_SIDE = 4096


@dataclass(frozen=True)
class PreprocessConfig:
    """Knobs of the preprocessing pipeline."""

    size: int = 512  # training resolution of the square crop
    limits: IngestLimits = field(default_factory=IngestLimits)
    min_segment_s: float = 4.0  # the shortest usable consistent segment
    min_face_ratio: float = 0.5  # below this the clip has no usable face
    max_gap_frames: int = 12  # face losses up to this long are interpolated
    audio_encoder: str = "logmel"
    audio_encoder_path: Path | None = None
    val_fraction: float = 0.1
    fps: int = 25


def _noop(_stage: str, _fraction: float) -> None:
    return None


def track_faces(video: Path, progress: Progress, total: int) -> tuple[list[Any], np.ndarray]:
    """Pass 1: every face in every frame, and a small colour signature per frame."""
    per_frame: list[Any] = []
    signatures: list[np.ndarray] = []
    with FaceMeshDetector(max_faces=3, video_mode=True) as detector:
        for i, rgb in enumerate(iter_frames(video, MAX_DECODE_SIDE)):
            per_frame.append(detector.detect(rgb))
            signatures.append(frame_signature(rgb))
            if i % 25 == 0:
                progress("tracking", min(1.0, i / max(1, total)))
    return per_frame, np.stack(signatures) if signatures else np.zeros((0, 1), np.float32)


def preprocess_video(
    src: Path,
    out_dir: Path,
    config: PreprocessConfig | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Turn a portrait video into a dataset directory; raises MediaError with a stable code."""
    config = config or PreprocessConfig()
    check_source(probe(src), config.limits)
    with tempfile.TemporaryDirectory(prefix="th-preprocess-") as tmp:
        video, audio_path = Path(tmp) / "video.mp4", Path(tmp) / "audio.wav"
        normalise(src, video, audio_path)
        return build_dataset(video, audio_path, out_dir, config, progress)


def _descriptors(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per-frame identity descriptors of the main track, NaN rows where it was not found."""
    first = identity_descriptor(points[int(np.argmax(found))])
    out = np.full((len(found), len(first)), np.nan, np.float32)
    for t in np.nonzero(found)[0]:
        out[t] = identity_descriptor(points[t])
    return out


def build_dataset(
    video: Path,
    audio_path: Path,
    out_dir: Path,
    config: PreprocessConfig | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Build the dataset from normalised media (25 fps video, 16 kHz mono WAV)."""
    config = config or PreprocessConfig()
    progress = progress or _noop
    info = probe(video)
    assert info.video is not None
    frame_w, frame_h, total = info.video.width, info.video.height, info.video.frames
    per_frame, signatures = track_faces(video, progress, total)
    track = select_main_subject(per_frame)
    if track.found_ratio < config.min_face_ratio:
        code = "face_not_found"
        raise MediaError(code, f"a face was found in {track.found_ratio:.0%} of the frames")
    cuts = find_cuts(signatures, _descriptors(track.points, track.found))
    min_len = int(config.min_segment_s * config.fps)
    segments = consistent_segments(track, cuts, min_len, config.max_gap_frames)
    if not segments:
        code = "multiple_subjects" if cuts else "face_not_found"
        raise MediaError(
            code,
            "no consistent stretch of one person is long enough "
            f"(need {config.min_segment_s:.0f} s; cuts at frames {cuts})",
        )
    start, end = segments[0]
    points, valid = interpolate_gaps(
        track.points[start:end], track.found[start:end], config.max_gap_frames
    )
    x0, y0, side = fixed_crop(points, valid, frame_w, frame_h)
    scale = config.size / side
    crop_points = points.copy()
    crop_points[..., 0] = (points[..., 0] - x0) * scale
    crop_points[..., 1] = (points[..., 1] - y0) * scale
    crop_points[..., 2] = points[..., 2] * scale

    K = intrinsics(config.size, config.size)
    poses = estimate_poses(crop_points, valid, K, reference_shape(crop_points, valid))
    euler, trans = smooth_poses(poses.euler, poses.translation, config.fps)
    progress("pose", 1.0)

    n = end - start
    writer = DatasetWriter(out_dir, config.size, config.fps)
    plate = BackgroundPlate((config.size, config.size, 3))
    coverage = np.zeros(4, np.float64)
    with PersonSegmenter() as segmenter:
        for i, rgb in enumerate(iter_frames(video, MAX_DECODE_SIDE, start=start, count=n)):
            crop = cv2.resize(
                rgb[y0 : y0 + side, x0 : x0 + side],
                (config.size, config.size),
                interpolation=cv2.INTER_AREA,
            )
            person = segmenter.person_mask(crop)
            labels = semantic_labels(crop.shape, person, crop_points[i] if valid[i] else None)
            plate.add(crop, person)
            writer.add_frame(i, crop, labels)
            cov = mask_coverage(labels)
            coverage += [cov.get(k, 0.0) for k in ("background", "head", "neck", "torso")]
            if i % 25 == 0:
                progress("frames", i / max(1, n))
    background, _ = plate.result()
    writer.write_background(background)

    encoder = encoder_from_name(config.audio_encoder, config.audio_encoder_path)
    wave = load_audio(audio_path)
    offset = round(start / config.fps * 16000)
    segment_wave = wave[offset : offset + round(n / config.fps * 16000)]
    features = encoder.encode(segment_wave, n, config.fps)
    progress("audio", 1.0)

    pose_mats = poses_to_matrices(euler, trans).astype(np.float32)
    writer.write_arrays(
        landmarks=crop_points.astype(np.float32),
        poses=pose_mats,
        euler=euler.astype(np.float32),
        eye=eye_openness(crop_points).astype(np.float32),
        mouth=mouth_openness(crop_points).astype(np.float32),
        lips_bbox=lips_bbox(crop_points).astype(np.float32),
        face_bbox=face_bbox(crop_points).astype(np.float32),
        audio_features=features.astype(np.float32),
        valid=valid,
    )
    jitter = np.abs(np.diff(euler[valid], axis=0)).mean() if valid.sum() > 1 else 0.0
    quality = {
        "face_found_ratio": round(float(track.found[start:end].mean()), 4),
        "face_found_ratio_clip": round(track.found_ratio, 4),
        "pose_jitter_deg": round(float(jitter), 4),
        "mask_coverage": dict(
            zip(
                ("background", "head", "neck", "torso"),
                (coverage / max(1, n)).round(4).tolist(),
                strict=True,
            )
        ),
        "audio_level_dbfs": round(audio_level_dbfs(segment_wave), 2),
        "segment": [int(start), int(end)],
        "cuts": cuts,
        "faces_seen": track.n_tracks,
    }
    meta = {
        "source": {"duration_s": info.duration_s, "width": frame_w, "height": frame_h},
        "crop": [int(x0), int(y0), int(side)],
        "intrinsics": K.tolist(),
        "audio": {"encoder": encoder.name, "dim": int(features.shape[1])},
    }
    return writer.finalize(meta, quality, make_split(n, config.val_fraction))
