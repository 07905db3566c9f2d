"""Video to dataset in two streaming passes: track the face, then crop, segment and write.

Memory does not grow with the video's length beyond a few small numbers per frame: landmarks
go to a disk spool and come back in blocks, frames flow through bounded queues.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from talkinghead.media import MediaError, iter_frames, probe
from talkinghead.preprocess.audio import audio_level_dbfs, encoder_from_name, read_wav
from talkinghead.preprocess.features import eye_openness, face_bbox, lips_bbox, mouth_openness
from talkinghead.preprocess.ingest import (
    IngestLimits,
    check_source,
    normalise_audio,
    normalised_frames,
    normalised_size,
)
from talkinghead.preprocess.landmarks import N_LANDMARKS, FaceMeshDetector
from talkinghead.preprocess.manifest import DatasetWriter, Manifest, make_split
from talkinghead.preprocess.masks import (
    BackgroundPlate,
    PersonSegmenter,
    mask_coverage,
    semantic_labels,
)
from talkinghead.preprocess.pose import (
    PoseSolver,
    frontal_angle,
    intrinsics,
    poses_to_matrices,
    reference_shape,
    rotation_to_euler,
    smooth_poses,
)
from talkinghead.preprocess.streaming import OrderedWorker, RowSpool, malloc_trim, prefetch
from talkinghead.preprocess.tracking import (
    FaceBox,
    GapPlan,
    MainSlots,
    consistent_segments,
    find_cuts,
    fixed_crop_from_extents,
    frame_signature,
    gap_plan,
    gap_points,
    identity_descriptor,
    main_subject_slots,
)

Progress = Callable[[str, float], None]
MAX_DECODE_SIDE = 4096
CHUNK = 256  # frames per block when landmarks are read back from the spool
MAX_REFERENCE_FRAMES = 256  # frontal frames in the reference shape's median, at most


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


@dataclass
class FirstPass:
    """Pass 1's output: face boxes and a colour signature per frame; landmarks in a disk spool.

    Each FaceBox.row names its face's landmark row in `spool`, so no (T, 478, 3) array is held.
    """

    boxes: list[list[FaceBox]]
    signatures: np.ndarray  # (T, 24) float32
    spool: RowSpool


def track_faces(
    frames: Iterable[np.ndarray], spool: RowSpool, progress: Progress, total: int
) -> FirstPass:
    """Pass 1: every face in every frame (landmarks to `spool`), and a colour signature."""
    boxes: list[list[FaceBox]] = []
    signatures: list[np.ndarray] = []
    with FaceMeshDetector(max_faces=3, video_mode=True) as detector:
        # Decoding runs ahead in a thread while mediapipe (which releases the GIL) works.
        for i, rgb in enumerate(prefetch(frames, depth=4)):
            faces = detector.detect(rgb)
            boxes.append([FaceBox(face.bbox, spool.append(face.points)) for face in faces])
            signatures.append(frame_signature(rgb))
            if i % 25 == 0:
                progress("tracking", min(1.0, i / max(1, total)))
    sig = np.stack(signatures) if signatures else np.zeros((0, 1), np.float32)
    return FirstPass(boxes=boxes, signatures=sig, spool=spool)


def preprocess_video(
    src: Path,
    out_dir: Path,
    config: PreprocessConfig | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Turn a portrait video into a dataset directory; raises MediaError with a stable code.

    The normalised video is only an intermediate here, so both passes decode the source through
    `normalise`'s filters (25 fps, rotation, even size) instead of encoding an mp4 and decoding
    it: that is most of normalisation's cost. The audio is normalised to WAV as before.
    """
    config = config or PreprocessConfig()
    progress = progress or _noop
    source = probe(src)
    check_source(source, config.limits)
    size = normalised_size(source, MAX_DECODE_SIDE)
    with tempfile.TemporaryDirectory(prefix="th-preprocess-") as tmp:
        audio_path = Path(tmp) / "audio.wav"
        normalise_audio(src, audio_path)
        spool = RowSpool(Path(tmp) / "faces.f32", (N_LANDMARKS, 3))
        try:
            total = round(source.duration_s * config.fps)
            first = track_faces(normalised_frames(src, size), spool, progress, total)
            clip = Clip(
                width=size[0],
                height=size[1],
                duration_s=source.duration_s,
                frames=lambda start, count: normalised_frames(src, size, start, count),
            )
            return _build(clip, audio_path, out_dir, config, progress, first)
        finally:
            spool.close()


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
    clip = Clip(
        width=info.video.width,
        height=info.video.height,
        duration_s=info.duration_s,
        frames=lambda start, count: iter_frames(video, MAX_DECODE_SIDE, start=start, count=count),
    )
    with tempfile.TemporaryDirectory(prefix="th-preprocess-") as tmp:
        spool = RowSpool(Path(tmp) / "faces.f32", (N_LANDMARKS, 3))
        try:
            first = track_faces(clip.frames(0, None), spool, progress, info.video.frames)
            return _build(clip, audio_path, out_dir, config, progress, first)
        finally:
            spool.close()


@dataclass(frozen=True)
class Clip:
    """The normalised video as the passes see it: frame size, duration, and a frame reader."""

    width: int
    height: int
    duration_s: float
    frames: Callable[[int, int | None], Iterator[np.ndarray]]  # (start, count) -> RGB frames


class SegmentLandmarks:
    """The main subject's landmarks over the chosen segment, read from the spool in blocks.

    Gap filling and the crop transform are applied on the fly, so no (T, 478, 3) array is kept.
    """

    def __init__(self, spool: RowSpool, rows: np.ndarray, plan: GapPlan) -> None:
        """rows: (n,) spool row of each segment frame's main face (-1 = not found)."""
        self.spool, self.rows, self.plan = spool, rows, plan
        self.x0, self.y0, self.scale = 0, 0, 1.0
        self.n = len(rows)

    def source(self, frames: np.ndarray) -> np.ndarray:
        """Points (k, 478, 3) float32 in source pixels; NaN where invalid."""
        return gap_points(self.plan, frames, lambda f: self.spool.read(self.rows[f]))

    def crop(self, frames: np.ndarray) -> np.ndarray:
        """Points (k, 478, 3) float32 in crop pixels (x, y and z scaled to the crop)."""
        points = self.source(frames)
        out = points.copy()
        out[..., 0] = (points[..., 0] - self.x0) * self.scale
        out[..., 1] = (points[..., 1] - self.y0) * self.scale
        out[..., 2] = points[..., 2] * self.scale
        return out

    def blocks(self) -> Iterator[np.ndarray]:
        """Frame indices in blocks of CHUNK."""
        for b in range(0, self.n, CHUNK):
            yield np.arange(b, min(self.n, b + CHUNK))


def main_track_rows(first: FirstPass, main: MainSlots) -> np.ndarray:
    """(T,) spool row of each frame's main-subject face, -1 where it was not found."""
    return np.array(
        [
            boxes[slot].row if slot >= 0 else -1
            for boxes, slot in zip(first.boxes, main.slot, strict=True)
        ],
        dtype=np.int64,
    )


def main_descriptors(first: FirstPass, main_rows: np.ndarray) -> np.ndarray:
    """Per-frame identity descriptors of the main track (T, K), NaN rows where not found."""
    found = np.nonzero(main_rows >= 0)[0]
    width = len(identity_descriptor(first.spool.read(main_rows[found[:1]]))[0])
    out = np.full((len(main_rows), width), np.nan, np.float32)
    for b in range(0, len(found), CHUNK):
        idx = found[b : b + CHUNK]
        out[idx] = identity_descriptor(first.spool.read(main_rows[idx]))
    return out


def segment_reference(marks: SegmentLandmarks) -> np.ndarray:
    """`reference_shape` of the segment's crop points from at most MAX_REFERENCE_FRAMES frames."""
    angle = np.full(marks.n, np.inf)
    for frames in marks.blocks():
        points = marks.crop(frames)
        ok = marks.plan.valid[frames] & np.all(np.isfinite(points), axis=(1, 2))
        angle[frames[ok]] = frontal_angle(points[ok])
    usable = np.nonzero(np.isfinite(angle))[0]
    if len(usable) == 0:
        raise ValueError("no valid frames to build a reference shape from")
    # The most frontal quarter, as reference_shape picks it; capped so that long clips cost
    # no more memory (a median of 256 frontal frames is as steady as one of more).
    count = min(MAX_REFERENCE_FRAMES, max(1, int(np.ceil(0.25 * len(usable)))))
    keep = np.sort(usable[np.argsort(angle[usable])[:count]])
    return reference_shape(marks.crop(keep), frontal_fraction=1.0)


def _build(
    clip: Clip,
    audio_path: Path,
    out_dir: Path,
    config: PreprocessConfig,
    progress: Progress,
    first: FirstPass,
) -> Manifest:
    """Everything after pass 1: subject, cuts, crop, pose, pass 2 (frames, masks), audio."""
    frame_w, frame_h = clip.width, clip.height
    main = main_subject_slots(first.boxes)
    found = main.found
    main_rows = main_track_rows(first, main)
    found_ratio = float(found.mean()) if len(found) else 0.0
    if found_ratio < config.min_face_ratio:
        code = "face_not_found"
        raise MediaError(code, f"a face was found in {found_ratio:.0%} of the frames")
    cuts = find_cuts(first.signatures, main_descriptors(first, main_rows))
    min_len = int(config.min_segment_s * config.fps)
    segments = consistent_segments(found, cuts, min_len, config.max_gap_frames)
    if not segments:
        code = "multiple_subjects" if cuts else "face_not_found"
        raise MediaError(
            code,
            "no consistent stretch of one person is long enough "
            f"(need {config.min_segment_s:.0f} s; cuts at frames {cuts})",
        )
    start, end = segments[0]
    n = end - start
    marks = SegmentLandmarks(
        first.spool, main_rows[start:end], gap_plan(found[start:end], config.max_gap_frames)
    )
    valid = marks.plan.valid

    lo = np.empty((n, 2), np.float32)
    hi = np.empty((n, 2), np.float32)
    for frames in marks.blocks():
        xy = marks.source(frames)[..., :2]  # (k, 478, 2)
        lo[frames], hi[frames] = xy.min(axis=1), xy.max(axis=1)
    x0, y0, side = fixed_crop_from_extents(lo[valid], hi[valid], frame_w, frame_h)
    marks.x0, marks.y0, marks.scale = x0, y0, config.size / side

    K = intrinsics(config.size, config.size)
    solver = PoseSolver(K, segment_reference(marks))
    rotation = np.full((n, 3, 3), np.nan)
    translation = np.full((n, 3), np.nan)
    pose_ok = valid.copy()
    features: dict[str, list[np.ndarray]] = {k: [] for k in ("eye", "mouth", "lips", "face")}
    writer = DatasetWriter(out_dir, config.size, config.fps)
    with writer.array_stream("landmarks", n, (N_LANDMARKS, 3), "float32") as landmarks:
        for frames in marks.blocks():
            points = marks.crop(frames)  # (k, 478, 3)
            landmarks.write(points)
            for k, t in enumerate(frames):
                pose = solver.solve(points[k] if valid[t] else None)
                if pose is None:
                    pose_ok[t] = False
                else:
                    rotation[t], translation[t] = pose
            features["eye"].append(eye_openness(points))
            features["mouth"].append(mouth_openness(points))
            features["lips"].append(lips_bbox(points))
            features["face"].append(face_bbox(points))
    euler_raw = np.full((n, 3), np.nan)
    euler_raw[pose_ok] = rotation_to_euler(rotation[pose_ok])
    euler, trans = smooth_poses(euler_raw, translation, config.fps)
    progress("pose", 1.0)
    malloc_trim()  # pass 1's transient buffers, before pass 2 allocates its own

    background, coverage = _frames_pass(
        clip, start, n, (x0, y0, side), marks, writer, config, progress
    )
    writer.write_background(background)
    malloc_trim()

    encoder = encoder_from_name(config.audio_encoder, config.audio_encoder_path)
    offset = round(start / config.fps * 16000)
    segment_wave = read_wav(audio_path, offset, round(n / config.fps * 16000))
    audio_features = encoder.encode(segment_wave, n, config.fps)
    progress("audio", 1.0)

    pose_mats = poses_to_matrices(euler, trans).astype(np.float32)
    writer.write_arrays(
        poses=pose_mats,
        euler=euler.astype(np.float32),
        eye=np.concatenate(features["eye"]).astype(np.float32),
        mouth=np.concatenate(features["mouth"]).astype(np.float32),
        lips_bbox=np.concatenate(features["lips"]).astype(np.float32),
        face_bbox=np.concatenate(features["face"]).astype(np.float32),
        audio_features=audio_features.astype(np.float32),
        valid=valid,
    )
    jitter = np.abs(np.diff(euler[valid], axis=0)).mean() if valid.sum() > 1 else 0.0
    quality = {
        "face_found_ratio": round(float(found[start:end].mean()), 4),
        "face_found_ratio_clip": round(found_ratio, 4),
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
        "faces_seen": main.n_tracks,
    }
    meta = {
        "source": {"duration_s": clip.duration_s, "width": frame_w, "height": frame_h},
        "crop": [int(x0), int(y0), int(side)],
        "intrinsics": K.tolist(),
        "audio": {"encoder": encoder.name, "dim": int(audio_features.shape[1])},
    }
    return writer.finalize(meta, quality, make_split(n, config.val_fraction))


def _frames_pass(
    clip: Clip,
    start: int,
    n: int,
    crop: tuple[int, int, int],
    marks: SegmentLandmarks,
    writer: DatasetWriter,
    config: PreprocessConfig,
    progress: Progress,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: crop, segment, label and write every frame; returns (plate, coverage sums).

    Coverage sums are (4,): fractions of background, head, neck and torso summed over frames.
    """
    x0, y0, side = crop
    size = config.size
    plate = BackgroundPlate((size, size, 3))
    coverage = np.zeros(4, np.float64)

    def crops() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Decode + crop + resize, with each frame's crop-space landmarks (None if invalid)."""
        frames = clip.frames(start, n)
        points = np.empty((0, N_LANDMARKS, 3), np.float32)
        for i, rgb in enumerate(frames):
            if i % CHUNK == 0:
                points = marks.crop(np.arange(i, min(n, i + CHUNK)))
            image = cv2.resize(
                rgb[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA
            )
            yield image, points[i % CHUNK] if marks.plan.valid[i] else None

    def finish(i: int, image: np.ndarray, person: np.ndarray, points: np.ndarray | None) -> None:
        """Labels, plate, coverage and files of one frame (one worker thread: in order)."""
        labels = semantic_labels(image.shape, person, points)
        plate.add(image, person)
        writer.add_frame(i, image, labels)
        cov = mask_coverage(labels)
        coverage[:] += [cov.get(k, 0.0) for k in ("background", "head", "neck", "torso")]

    # Three stages on 2 cores: decode/crop (thread), segmentation (here; mediapipe releases the
    # GIL), labels/plate/JPEG+PNG (worker; OpenCV releases the GIL). Queues are bounded.
    with PersonSegmenter() as segmenter, OrderedWorker(finish, depth=6, name="frames") as worker:
        for i, (image, points) in enumerate(prefetch(crops(), depth=4)):
            worker.submit(i, image, segmenter.person_mask(image), points)
            if i % 25 == 0:
                progress("frames", i / max(1, n))
    background, _ = plate.result()
    return background, coverage
