"""One source video to corpus utterances, or refusals with a code.

The avatar preprocessing does the heavy lifting: pass 1 (`track_faces`) follows every face at
a work size, `main_subject_slots`, `find_cuts` and `consistent_segments` give the shots of the
main subject, `PoseSolver` on one reference shape gives the pose. Here the shots are checked to
show one person, split into utterances at pauses, checked for audio/video sync, and pass 2
decodes the source once more to cut each utterance's crops and person masks. At most one
utterance's frames are held; with no `emit` callback they go to files in `work_dir`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from talkinghead.corpus.format import CROP_SIZE, FPS, SAMPLE_RATE, ClipMeta, ClipRecord
from talkinghead.corpus.sync import measure_lag
from talkinghead.corpus.utterances import plan_utterances
from talkinghead.media import (
    SILENCE_ACTIVE_DBFS,
    SILENCE_PEAK_DBFS,
    MediaError,
    MediaInfo,
    probe,
    speech_levels,
)
from talkinghead.preprocess.audio import AudioEncoder, encoder_from_name, read_wav
from talkinghead.preprocess.features import eye_openness, face_bbox, lips_bbox, mouth_openness
from talkinghead.preprocess.ingest import (
    display_size,
    normalise_audio,
    normalised_frames,
    normalised_size,
)
from talkinghead.preprocess.landmarks import N_LANDMARKS
from talkinghead.preprocess.masks import PersonSegmenter
from talkinghead.preprocess.pipeline import (
    FirstPass,
    SegmentLandmarks,
    main_descriptors,
    main_track_rows,
    segment_reference,
    track_faces,
)
from talkinghead.preprocess.pose import (
    STABLE_POINTS,
    PoseSolver,
    euler_to_rotation,
    intrinsics,
    rotation_to_euler,
    smooth_poses,
)
from talkinghead.preprocess.streaming import RowSpool, malloc_trim, prefetch
from talkinghead.preprocess.tracking import (
    MainSlots,
    bbox_iou,
    consistent_segments,
    find_cuts,
    fixed_crop_from_extents,
    gap_plan,
    main_subject_slots,
)

Progress = Callable[[str, float], None]
Emit = Callable[[ClipRecord], None]
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
MIN_DECODED_FRACTION = 0.9  # less of the stated duration decodes: the file is truncated
SAME_FACE_IOU = 0.3  # a second mesh overlapping the main face this much is the same face
POSE_CELL_DEG = 8.0  # shots are compared in yaw/pitch cells this wide ...
MIN_MATCHED_FRAMES = 8  # ... if the cells both visit hold this many frames of each
UNMATCHED_FACTOR = 1.6  # otherwise the threshold is this much looser (pose adds its own spread)


@dataclass(frozen=True)
class SourceTags:
    """What the operator says about a source: who, which language, under which licence."""

    identity: str
    speaker: str
    language: str
    licence: str
    source: str  # the path or URL as listed
    source_sha256: str


@dataclass(frozen=True)
class CorpusBuildConfig:
    """Knobs of the corpus builder."""

    min_utterance_s: float = 3.0
    max_utterance_s: float = 12.0
    min_pause_s: float = 0.3  # utterances are split in pauses at least this long
    max_av_offset_frames: float = 2.0  # |audio-to-mouth lag| above this refuses the segment
    av_search_frames: int = 6  # lags searched: -this..+this frames
    audio_encoder: str = "logmel"
    audio_encoder_path: Path | None = None
    crop_size: int = CROP_SIZE
    min_face_ratio: float = 0.5  # below this the source has no usable face
    work_size: int = 512  # longer side of the frames the faces are tracked on
    max_gap_frames: int = 12  # face losses up to this long are interpolated
    identity_threshold: float = 0.028  # descriptor distance between shots of different people
    rival_area_ratio: float = 0.35  # a second face this large (vs the main one) competes ...
    max_rival_fraction: float = 0.1  # ... and competing in more of the frames refuses the source

    def __post_init__(self) -> None:
        """Refuse settings the utterance split cannot honour."""
        if not 0 < 2 * self.min_utterance_s <= self.max_utterance_s:
            raise ValueError(
                "max_utterance_s must be at least twice min_utterance_s (a long stretch of "
                f"speech is cut in two), got {self.min_utterance_s} and {self.max_utterance_s}"
            )


@dataclass(frozen=True)
class Refusal:
    """A refused source (0 to its end) or part of one, with a code from format.REFUSALS."""

    start_s: float
    end_s: float
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "code": self.code,
            "message": self.message,
        }


@dataclass
class SourceOutcome:
    """What a source gave: its utterances (unless streamed to `emit`), refusals and counts."""

    records: list[ClipRecord] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)


class _Refused(Exception):
    """The whole source is refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# MediaError codes of talkinghead.media and ingest, in the refusal vocabulary of the corpus.
_MEDIA_CODES = {"no_video_stream": "unreadable_media", "no_audio_stream": "no_audio"}


def content_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _noop(_stage: str, _fraction: float) -> None:
    return None


def build_source(
    path: Path,
    tags: SourceTags,
    work_dir: Path,
    config: CorpusBuildConfig | None = None,
    progress: Progress | None = None,
    emit: Emit | None = None,
) -> SourceOutcome:
    """Turn one source video into utterances; what cannot be used is refused, never raised.

    With `emit`, each record goes to it as soon as it is complete and `records` stays empty;
    without, records are collected and their crops and masks live in files under `work_dir`
    (memory maps), which must outlive them.
    """
    config = config or CorpusBuildConfig()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    outcome = SourceOutcome()
    builder = _SourceBuilder(Path(path), tags, work_dir, config, progress or _noop, emit, outcome)
    try:
        builder.run()
    except _Refused as exc:
        outcome.refusals.insert(0, Refusal(0.0, builder.duration_s, exc.code, exc.message))
    except MediaError as exc:
        code = _MEDIA_CODES.get(exc.code, exc.code)
        outcome.refusals.insert(0, Refusal(0.0, builder.duration_s, code, exc.message))
    return outcome


@dataclass
class _Segment:
    """One shot of the main subject, [start, end) frames, with its per-frame geometry."""

    start: int
    end: int
    marks: SegmentLandmarks  # source-pixel landmarks from the spool
    euler: np.ndarray  # (n, 3) smoothed yaw, pitch, roll
    trans: np.ndarray  # (n, 3) smoothed translation
    eye: np.ndarray  # (n,)
    mouth: np.ndarray  # (n,)
    face_box: np.ndarray  # (n, 4)
    lips_box: np.ndarray  # (n, 4)
    lo: np.ndarray  # (n, 2) landmark extent, min x, y
    hi: np.ndarray  # (n, 2) max x, y


@dataclass(frozen=True)
class _Utterance:
    """An accepted utterance: frames [start, end) of the source, in segment `segment`."""

    index: int
    segment: _Segment
    start: int
    end: int
    crop: tuple[int, int, int]  # x0, y0, side in source pixels
    lag: float
    sync_score: float

    @property
    def frames(self) -> int:
        """Number of video frames."""
        return self.end - self.start


class _SourceBuilder:
    """The stages of `build_source` over one source; raises _Refused for a whole-source refusal."""

    def __init__(
        self,
        path: Path,
        tags: SourceTags,
        work_dir: Path,
        config: CorpusBuildConfig,
        progress: Progress,
        emit: Emit | None,
        outcome: SourceOutcome,
    ) -> None:
        self.path, self.tags, self.work_dir, self.config = path, tags, work_dir, config
        self.progress, self.emit, self.outcome = progress, emit, outcome
        self.duration_s = 0.0
        self.source_size = (0, 0)
        self.wave = np.zeros(0, np.float32)
        self.camera = np.eye(3)  # pinhole of the source frame, set once its size is known
        # A bad encoder setting is the operator's error, not the source's: it raises, up front.
        self.encoder = encoder_from_name(config.audio_encoder, config.audio_encoder_path)

    def refuse_part(self, start: int, end: int, code: str, message: str) -> None:
        """Record a refused stretch of frames [start, end)."""
        self.outcome.refusals.append(Refusal(start / FPS, end / FPS, code, message))

    def run(self) -> None:
        """All stages in order."""
        info = self.check()
        self.load_audio(info)
        spool = RowSpool(self.work_dir / "faces.f32", (N_LANDMARKS, 3))
        try:
            work = normalised_size(info, self.config.work_size)
            total = round(info.duration_s * FPS)
            first = track_faces(normalised_frames(self.path, work), spool, self.progress, total)
            self.progress("tracking", 1.0)
            if len(first.boxes) < MIN_DECODED_FRACTION * total:
                raise _Refused(
                    "unreadable_media",
                    f"only {len(first.boxes)} of {total} frames decode: the file is truncated",
                )
            utterances = self.plan(first, self.source_size[0] / work[0])
            self.progress("utterances", 1.0)
            malloc_trim()
            if utterances:
                self.frames_pass(info, utterances)
        finally:
            spool.close()
        kept = sum(u.frames for u in utterances) / FPS
        self.outcome.counts.update(utterances=len(utterances), seconds_kept=round(kept, 3))

    def check(self) -> MediaInfo:
        """Probe; refuse files without usable streams or too short to hold an utterance."""
        info = probe(self.path)  # MediaError('unreadable_media') when it cannot
        self.duration_s = info.duration_s
        if info.video is None or info.video.frames <= 0:
            raise _Refused("unreadable_media", "the file has no decodable video stream")
        if info.audio is None:
            raise _Refused("no_audio", "the video has no audio stream")
        if info.duration_s < self.config.min_utterance_s:
            raise _Refused(
                "too_short",
                f"the video lasts {info.duration_s:.1f} s; an utterance needs "
                f"{self.config.min_utterance_s:g} s",
            )
        self.source_size = display_size(info)
        self.outcome.counts.update(duration_s=round(info.duration_s, 3))
        return info

    def load_audio(self, info: MediaInfo) -> None:
        """16 kHz mono audio of the whole source; refuse truncated or silent audio."""
        wav = self.work_dir / "audio.wav"
        normalise_audio(self.path, wav)
        self.wave = read_wav(wav)
        wav.unlink()
        decoded = len(self.wave) / SAMPLE_RATE
        if decoded < MIN_DECODED_FRACTION * info.duration_s - 0.5:
            raise _Refused(
                "unreadable_media",
                f"only {decoded:.1f} s of {info.duration_s:.1f} s of audio decode: "
                "the file is truncated",
            )
        peak, active = speech_levels(self.wave, SAMPLE_RATE)
        if peak < SILENCE_PEAK_DBFS or active < SILENCE_ACTIVE_DBFS:
            raise _Refused("silent", f"no speech (peak {peak:.0f} dBFS, loudest {active:.0f})")

    def plan(self, first: FirstPass, scale: float) -> list[_Utterance]:
        """Subject checks, shots, pose and features, sync, utterances: everything before pass 2."""
        config = self.config
        main = main_subject_slots(first.boxes)
        found = main.found
        n_frames = len(found)
        ratio = float(found.mean()) if n_frames else 0.0
        self.outcome.counts.update(frames=n_frames, face_found_ratio=round(ratio, 4))
        if ratio < config.min_face_ratio:
            raise _Refused("face_not_found", f"a face was found in {ratio:.0%} of the frames")
        competing = _competing_fraction(first, main, config.rival_area_ratio)
        if competing > config.max_rival_fraction:
            raise _Refused(
                "multiple_subjects", f"a second face competes in {competing:.0%} of the frames"
            )
        rows = main_track_rows(first, main)
        descriptors = main_descriptors(first, rows)
        # Shots end at colour cuts. A jump of the face's proportions alone (find_cuts' other
        # signal) is a change of person only if the pose-matched comparison below agrees;
        # otherwise it is a head turn, and splitting the shot there would cut speech in two.
        cuts = find_cuts(first.signatures)
        person_cuts = [c for c in find_cuts(first.signatures, descriptors) if c not in cuts]
        min_len = math.ceil(config.min_utterance_s * FPS)
        bounds = sorted(consistent_segments(found, cuts, min_len, config.max_gap_frames))
        self.outcome.counts.update(cuts=len(cuts), segments=len(bounds))
        if not bounds:
            raise _Refused(
                "too_short",
                f"no shot shows the face for {config.min_utterance_s:g} s (cuts at {cuts})",
            )
        marks = [self.landmarks(first, rows, found, s, e, scale) for s, e in bounds]
        longest = max(range(len(bounds)), key=lambda i: bounds[i][1] - bounds[i][0])
        reference = segment_reference(marks[longest])
        self.camera = intrinsics(*self.source_size)
        segments = [
            self.geometry(s, e, m, reference) for (s, e), m in zip(bounds, marks, strict=True)
        ]
        distance = _check_one_person(descriptors, segments, person_cuts, config.identity_threshold)
        self.outcome.counts.update(identity_distance=round(distance, 4))
        utterances: list[_Utterance] = []
        for segment in segments:
            utterances += self.split(segment, len(utterances))
        return utterances

    def landmarks(
        self, first: FirstPass, rows: np.ndarray, found: np.ndarray, s: int, e: int, scale: float
    ) -> SegmentLandmarks:
        """The segment's landmark reader, giving source pixels (x, y and z scaled alike)."""
        marks = SegmentLandmarks(
            first.spool, rows[s:e], gap_plan(found[s:e], self.config.max_gap_frames)
        )
        marks.scale = scale
        return marks

    def geometry(self, s: int, e: int, marks: SegmentLandmarks, reference: np.ndarray) -> _Segment:
        """Pose (solved per frame, smoothed) and per-frame features over one segment."""
        n = e - s
        solver = PoseSolver(self.camera, reference)
        euler = np.full((n, 3), np.nan)
        trans = np.full((n, 3), np.nan)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("eye", "mouth", "face", "lips")}
        for frames in marks.blocks():
            points = marks.crop(frames)  # (k, 478, 3) source pixels
            for k, t in enumerate(frames):
                pose = solver.solve(points[k] if marks.plan.valid[t] else None)
                if pose is not None:
                    euler[t], trans[t] = rotation_to_euler(pose[0]), pose[1]
            parts["eye"].append(eye_openness(points))
            parts["mouth"].append(mouth_openness(points))
            parts["face"].append(face_bbox(points))
            parts["lips"].append(lips_bbox(points))
        face = np.concatenate(parts["face"])
        # A frame whose pose failed takes its neighbours' (smoothing would restart there).
        euler_s, trans_s = smooth_poses(_fill_rows(euler), _fill_rows(trans), FPS)
        return _Segment(
            start=s,
            end=e,
            marks=marks,
            euler=euler_s,
            trans=trans_s,
            eye=np.concatenate(parts["eye"]),
            mouth=np.concatenate(parts["mouth"]),
            face_box=face,
            lips_box=np.concatenate(parts["lips"]),
            lo=face[:, :2],
            hi=face[:, 2:],
        )

    def split(self, segment: _Segment, first_index: int) -> list[_Utterance]:
        """Sync check, then utterances at pauses; refused stretches are recorded."""
        config = self.config
        s, e = segment.start, segment.end
        wave = _samples(self.wave, s, e)
        sync = measure_lag(segment.mouth, wave, FPS, SAMPLE_RATE, config.av_search_frames)
        if abs(sync.lag) > config.max_av_offset_frames:
            self.refuse_part(
                s,
                e,
                "av_offset",
                f"audio is {sync.lag:+.1f} frames off the mouth "
                f"(tolerance {config.max_av_offset_frames:g})",
            )
            return []
        spans, dropped = plan_utterances(
            wave, SAMPLE_RATE, config.min_utterance_s, config.max_utterance_s, config.min_pause_s
        )
        for span in dropped:
            a, b = s + round(span.start * FPS), s + round(span.end * FPS)
            self.refuse_part(a, b, "too_short", f"speech of {span.duration:.1f} s between pauses")
        if not spans and not dropped:
            self.refuse_part(s, e, "silent", "no speech above the level threshold in this shot")
        out: list[_Utterance] = []
        for span in spans:
            a = s + max(0, math.floor(span.start * FPS))
            b = min(e, s + math.ceil(span.end * FPS), a + math.floor(config.max_utterance_s * FPS))
            x = slice(a - s, b - s)
            crop = fixed_crop_from_extents(
                segment.lo[x], segment.hi[x], self.source_size[0], self.source_size[1]
            )
            out.append(
                _Utterance(first_index + len(out), segment, a, b, crop, sync.lag, sync.score)
            )
        return out

    def frames_pass(self, info: MediaInfo, utterances: list[_Utterance]) -> None:
        """Pass 2: decode once, crop and mask each utterance's frames, finish its record."""
        size = self.crop_decode_size(info, utterances)
        k = size[0] / self.source_size[0]  # source pixels -> decoded pixels
        first, last = utterances[0].start, utterances[-1].end
        frames = normalised_frames(self.path, size, first, last - first)
        pending = iter(utterances)
        current = next(pending)
        crops, masks = self.buffers(current)
        done = 0
        with PersonSegmenter() as segmenter:
            for f, rgb in enumerate(prefetch(frames, depth=4), start=first):
                if f < current.start:
                    continue
                i = f - current.start
                crops[i] = _cut(rgb, current.crop, k, self.config.crop_size)
                person = segmenter.person_mask(crops[i])
                masks[i] = np.round(person * 255.0).astype(np.uint8)
                if f + 1 == current.end:
                    self.finish(current, crops, masks, self.encoder)
                    done += 1
                    self.progress("frames", done / len(utterances))
                    nxt = next(pending, None)
                    if nxt is None:
                        break
                    current = nxt
                    crops, masks = self.buffers(current)
        for utt in utterances[done:]:  # records already handed on stay valid
            self.refuse_part(
                utt.start, utt.end, "unreadable_media", "the video ended early on the second decode"
            )

    def crop_decode_size(self, info: MediaInfo, utterances: list[_Utterance]) -> tuple[int, int]:
        """Decode size for pass 2: the work size, or larger where a crop would be upscaled."""
        smallest = min(u.crop[2] for u in utterances)
        long_side = max(self.source_size)
        need = math.ceil(long_side * self.config.crop_size / max(1, smallest))
        return normalised_size(info, min(long_side, max(self.config.work_size, need)))

    def buffers(self, utt: _Utterance) -> tuple[np.ndarray, np.ndarray]:
        """Crop and mask arrays of one utterance: in memory when streamed, else memory maps."""
        size = self.config.crop_size
        shapes = ((utt.frames, size, size, 3), (utt.frames, size, size))
        if self.emit is not None:
            return np.empty(shapes[0], np.uint8), np.empty(shapes[1], np.uint8)
        stem = self.work_dir / self.key(utt.index)
        crops = np.lib.format.open_memmap(f"{stem}.crops.npy", "w+", np.uint8, shapes[0])
        masks = np.lib.format.open_memmap(f"{stem}.masks.npy", "w+", np.uint8, shapes[1])
        return crops, masks

    def key(self, index: int) -> str:
        """The record key of utterance `index`."""
        return f"{self.tags.source_sha256[:16]}-{index:03d}"

    def finish(
        self, utt: _Utterance, crops: np.ndarray, masks: np.ndarray, encoder: AudioEncoder
    ) -> None:
        """Assemble the record of one utterance and hand it on."""
        seg = utt.segment
        rel = np.arange(utt.start - seg.start, utt.end - seg.start)
        points = seg.marks.crop(rel)  # (T, 478, 3) source pixels
        euler, trans = seg.euler[rel], seg.trans[rel]
        wave = _samples(self.wave, utt.start, utt.end)
        features = encoder.encode(wave, utt.frames, FPS).astype(np.float32)
        x0, y0, side = utt.crop
        arrays = {
            "landmarks": points.astype(np.float32),
            "canonical": canonical_landmarks(points, euler, trans, self.camera),
            "pose": np.concatenate([euler, trans], axis=1).astype(np.float32),
            "eye_ratio": seg.eye[rel].astype(np.float32),
            "mouth_ratio": seg.mouth[rel].astype(np.float32),
            "face_box": seg.face_box[rel].astype(np.float32),
            "lips_box": seg.lips_box[rel].astype(np.float32),
            "crop_box": np.array([x0, y0, x0 + side, y0 + side], np.float32),
            "audio_features": features,
        }
        meta = ClipMeta(
            key=self.key(utt.index),
            identity=self.tags.identity,
            speaker=self.tags.speaker,
            language=self.tags.language,
            licence=self.tags.licence,
            source=self.tags.source,
            source_sha256=self.tags.source_sha256,
            start_s=round(utt.start / FPS, 3),
            duration_s=round(utt.frames / FPS, 3),
            num_frames=utt.frames,
            fps=FPS,
            source_size=self.source_size,
            crop_size=self.config.crop_size,
            audio_encoder=encoder.name,
            feature_dim=int(features.shape[1]),
            av_offset_frames=round(utt.lag, 2),
            extra={"av_correlation": round(utt.sync_score, 3), "shot": [seg.start, seg.end]},
        )
        audio = np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)
        record = ClipRecord(meta=meta, arrays=arrays, audio=audio, crops=crops, masks=masks)
        record.check()
        if self.emit is not None:
            self.emit(record)
        else:
            self.outcome.records.append(record)


def canonical_landmarks(
    points: np.ndarray, euler: np.ndarray, trans: np.ndarray, camera: np.ndarray
) -> np.ndarray:
    """Landmarks (T, 478, 3) in source pixels -> head frame (T, 478, 3) in reference units.

    Weak perspective around the stable points' centroid (which the reference shape is centred
    on): scale by the pose's depth (pixels per metre = focal / tz), then undo the rotation.
    """
    rotation = euler_to_rotation(euler)  # (T, 3, 3) head -> camera
    centre = points[:, STABLE_POINTS].mean(axis=1, keepdims=True)  # (T, 1, 3)
    per_metre = camera[0, 0] / np.asarray(trans, np.float64)[:, 2]  # (T,)
    local = (points - centre) / per_metre[:, None, None]
    # Row vectors times R is R^T applied to each point: camera -> head.
    return np.einsum("tni,tij->tnj", local, rotation).astype(np.float32)


def _competing_fraction(first: FirstPass, main: MainSlots, area_ratio: float) -> float:
    """Fraction of the main face's frames where another face at least `area_ratio` as big is."""
    hits = seen = 0
    for boxes, slot in zip(first.boxes, main.slot, strict=True):
        if slot < 0:
            continue
        seen += 1
        own = boxes[slot]
        for j, other in enumerate(boxes):
            if j == slot or bbox_iou(own.bbox, other.bbox) > SAME_FACE_IOU:
                continue
            if other.area >= area_ratio * own.area:
                hits += 1
                break
    return hits / max(1, seen)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean relative difference of two identity descriptors, as `find_cuts` measures jumps."""
    return float(np.mean(np.abs(a - b) / np.maximum(0.5 * (a + b), 1e-6)))


def _pose_cells(euler: np.ndarray) -> np.ndarray:
    """(n,) cell of each frame's yaw and pitch on a POSE_CELL_DEG grid, as one integer."""
    cells = np.floor(np.asarray(euler)[:, :2] / POSE_CELL_DEG).astype(np.int64)
    return cells[:, 0] * 1000 + cells[:, 1]


def _shot_distance(
    a: np.ndarray, cells_a: np.ndarray, b: np.ndarray, cells_b: np.ndarray
) -> tuple[float, bool]:
    """(descriptor distance of two stretches, whether poses could be matched).

    The face mesh's depth, and so the descriptor, shifts with the head's pose about as much as
    it differs between people; so the stretches are compared cell by cell over the pose cells
    both visit, each cell weighted by its smaller frame count (pooling the frames instead would
    compare different mixes of poses). Stretches with too few frames in common cells fall back
    to their overall medians, a looser comparison.
    """
    parts_a, parts_b, weights = [], [], []
    for cell in np.intersect1d(cells_a, cells_b):
        in_a, in_b = cells_a == cell, cells_b == cell
        count = int(min(in_a.sum(), in_b.sum()))
        if count >= 2:
            parts_a.append(np.median(a[in_a], axis=0))
            parts_b.append(np.median(b[in_b], axis=0))
            weights.append(count)
    if sum(weights) >= MIN_MATCHED_FRAMES:
        mean_a = np.average(parts_a, axis=0, weights=weights)
        mean_b = np.average(parts_b, axis=0, weights=weights)
        return identity_distance(mean_a, mean_b), True
    return identity_distance(np.median(a, axis=0), np.median(b, axis=0)), False


def _check_one_person(
    descriptors: np.ndarray, segments: list[_Segment], person_cuts: list[int], threshold: float
) -> float:
    """Refuse the source when a stretch shows someone else than its longest stretch does.

    The stretches are the segments, also split where `find_cuts` saw the face's proportions
    jump within a shot. Returns the largest distance to the longest stretch (0 if only one).
    """
    parts = []  # (start frame, descriptors, pose cells, split by a person cut) per stretch
    for seg in segments:
        inner = [c for c in person_cuts if seg.start < c < seg.end]
        for a, b in itertools.pairwise([seg.start, *inner, seg.end]):
            rows = descriptors[a:b]
            ok = np.all(np.isfinite(rows), axis=1)
            if ok.any():
                euler = seg.euler[a - seg.start : b - seg.start]
                parts.append((a, rows[ok], _pose_cells(euler[ok]), bool(inner)))
    parts.sort(key=lambda part: -len(part[1]))
    largest = 0.0
    for start, rows, cells, split in parts[1:]:
        distance, matched = _shot_distance(parts[0][1], parts[0][2], rows, cells)
        if not matched and (split or parts[0][3]):
            # A jump of proportions inside a shot, with no colour cut, that poses cannot
            # confirm: a head turn far more often than a new person in an unbroken shot.
            continue
        limit = threshold if matched else threshold * UNMATCHED_FACTOR
        if distance > limit:
            raise _Refused(
                "multiple_subjects",
                f"the stretches at {parts[0][0] / FPS:.1f} s and {start / FPS:.1f} s show "
                f"different people (face proportions differ by {distance:.1%})",
            )
        largest = max(largest, distance)
    return largest


def _fill_rows(x: np.ndarray) -> np.ndarray:
    """Interpolate rows with NaNs from their neighbours, column by column."""
    out = np.array(x, dtype=np.float64)
    ok = np.all(np.isfinite(out), axis=1)
    if ok.all() or not ok.any():
        return out
    idx = np.arange(len(out))
    for c in range(out.shape[1]):
        out[~ok, c] = np.interp(idx[~ok], idx[ok], out[ok, c])
    return out


def _samples(wave: np.ndarray, start: int, end: int) -> np.ndarray:
    """The audio of video frames [start, end), zero-padded past the end of the recording."""
    a, b = start * SAMPLES_PER_FRAME, end * SAMPLES_PER_FRAME
    out = np.zeros(b - a, np.float32)
    got = wave[a:b]
    out[: len(got)] = got
    return out


def _cut(rgb: np.ndarray, crop: tuple[int, int, int], k: float, size: int) -> np.ndarray:
    """The square crop (source pixels, decoded at scale k) resized to size x size."""
    h, w = rgb.shape[:2]
    x0, y0, side = (round(v * k) for v in crop)
    side = max(1, min(side, w, h))
    x0, y0 = min(max(0, x0), w - side), min(max(0, y0), h - side)
    region = rgb[y0 : y0 + side, x0 : x0 + side]
    method = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=method)
