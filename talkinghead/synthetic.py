"""Synthetic talking head with known per-frame truth, from zero-download assets.

A real face photo (`skimage.data.astronaut()`) is textured onto its own mediapipe face mesh
(478 points with depth, plus rings of points for the hair and the jaw sides), and that mesh is
rotated in 3D, projected with a pinhole camera and warped triangle by triangle onto a static
background above a torso that moves less than the head. The jaw opens with the envelope of an
`espeak-ng` utterance and the eyelids close for short blinks. `LipShape` adds lip movement
beyond the jaw (lower-lip drop, spreading or rounding, pressing); `build_head` takes any
repainted photo, which the multi-identity corpus (`talkinghead.corpus.synth`) builds on.

Conventions match `talkinghead.preprocess.pose` (OpenCV camera frame: x right, y down, z away
from the camera): the head rotation is R = Ry(-yaw) @ Rx(-pitch) @ Rz(roll), angles in degrees,
yaw > 0 turns the nose to the image's right, pitch > 0 nods the nose up, roll > 0 tilts the head
clockwise in the image. The angles are relative to the photo's own (near-frontal) head pose.
The camera has the focal length `focal` (pixels, 30 degree field of view across the frame) and
the head's pivot sits at depth `focal` so that it is drawn at the photo's scale.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from talkinghead.media import MediaError, ffmpeg_exe, run_ffmpeg

DEFAULT_TEXT = (
    "Hello, and welcome to this short demonstration. "
    "The quick brown fox jumps over the lazy dog, while the birds sing in the morning sun. "
    "Please remember to bring your notebook to the meeting on Thursday afternoon. "
    "Thank you very much for listening, and have a wonderful day."
)
SAMPLE_RATE = 16000
YAW_MAX, PITCH_MAX, ROLL_MAX = 25.0, 15.0, 10.0
TORSO_FOLLOW = 0.3  # the torso moves by this fraction of the head's translation
SECOND_FACE_SCALE = 0.4

# Face-mesh indices (mediapipe 0.10 face mesh, 478 points).
INNER_UPPER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
UPPER_LIP = [
    *INNER_UPPER_LIP,
    *[61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 407, 292],
    *[76, 184, 74, 73, 72, 11, 302, 303, 304, 408, 306, 62, 183, 42, 41, 38, 12, 268, 271, 272],
]
INNER_LOWER_LIP = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
# (upper lid, lower lid) contours from the outer to the inner corner, point for point.
EYES = (
    ([33, 246, 161, 160, 159, 158, 157, 173, 133], [33, 7, 163, 144, 145, 153, 154, 155, 133]),
    (
        [263, 466, 388, 387, 386, 385, 384, 398, 362],
        [263, 249, 390, 373, 374, 380, 381, 382, 362],
    ),
)
FACE_OVAL = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
]  # fmt: skip


@dataclass(frozen=True)
class SyntheticClip:
    """The generated files: the mp4, its per-frame truth (npz) and the 16 kHz speech (wav)."""

    video: Path
    truth: Path
    audio: Path


@dataclass(frozen=True)
class HeadModel:
    """A textured head mesh and the torso layer, at the output size."""

    texture: np.ndarray  # (S, S, 4) uint8 RGBA: photo + person mask (head layer)
    torso: np.ndarray  # (S, S, 4) uint8 RGBA: the body without the head
    uv: np.ndarray  # (N, 2) float32 texture coordinates
    geom: np.ndarray  # (N, 3) float64 neutral 3D points (pixels), relative to the pivot
    pivot: np.ndarray  # (3,) where the pivot is drawn (x, y) and its depth offset (unused z)
    triangles: np.ndarray  # (M, 3) int32
    jaw_weight: np.ndarray  # (N,) how much each point follows the jaw
    jaw_span: float  # the lower lip's largest drop, pixels
    eye_sets: tuple[tuple[np.ndarray, ...], ...]  # (upper, lower, inside, crease) indices
    lip_region: np.ndarray  # (N,) bump around the mouth: the lips themselves move with it
    mouth_field: np.ndarray  # (N,) wider bump: the skin that follows the lip corners
    lower_lip: np.ndarray  # (N,) lip_region below the inner upper lip (moves on its own)


@dataclass(frozen=True)
class LipShape:
    """Lip movement beyond the jaw, each about 0..1 (spread signed: < 0 rounds the lips)."""

    lower: float = 0.0  # extra drop of the lower lip
    spread: float = 0.0  # > 0 corners out; < 0 corners in and lips pushed forward
    press: float = 0.0  # lips pressed together: the rest gap closes


# --- assets ------------------------------------------------------------------------------------


def _photo_crop() -> np.ndarray:
    """The astronaut photo cropped square around her head and shoulders (300 x 300 RGB)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[4:304, 75:375])


@lru_cache(maxsize=4)
def detect_source(mirror: bool, work: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo (work x work RGB), person mask (float32 0..1) and 478 landmarks (pixels, z too)."""
    import mediapipe as mp

    photo = cv2.resize(_photo_crop(), (work, work), interpolation=cv2.INTER_CUBIC)
    if mirror:
        photo = np.ascontiguousarray(photo[:, ::-1])
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        mask = seg.process(photo).segmentation_mask.astype(np.float32)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1
    ) as mesh:
        found = mesh.process(photo).multi_face_landmarks
    if not found:
        raise RuntimeError("face mesh found no face on the synthetic source photo")
    pts = np.array([[p.x, p.y, p.z] for p in found[0].landmark], dtype=np.float64) * work
    return photo, mask, pts


def _recolour(photo: np.ndarray, mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """A different-looking person: darker hair, another skin tone, a blue suit."""
    out = photo.astype(np.float32)
    h, w = mask.shape
    face = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(face, np.round(pts[FACE_OVAL, :2]).astype(np.int32), 1)  # type: ignore[call-overload]  # cv2/numpy stubs
    face = cv2.GaussianBlur(face.astype(np.float32), (0, 0), 3)  # type: ignore[assignment]  # cv2/numpy stubs
    chin_y = pts[152, 1]
    rows = np.arange(h, dtype=np.float32)[:, None]
    below = np.clip((rows - chin_y) / 12.0, 0.0, 1.0) * np.ones((1, w), np.float32)
    hair = np.clip(mask - face, 0.0, 1.0) * (1.0 - below)
    body = mask * below
    skin_tone = np.array([0.72, 0.58, 0.5], np.float32)
    out = out * (1.0 - face[..., None]) + out * skin_tone * face[..., None]  # type: ignore[assignment]  # cv2/numpy stubs
    dark = out * 0.35 + np.array([12, 6, 2], np.float32)
    out = out * (1.0 - hair[..., None]) + dark * hair[..., None]
    suit = out[..., ::-1] * np.array([0.8, 0.9, 1.0], np.float32)
    out = out * (1.0 - body[..., None]) + suit * body[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _head(identity: int, size: int) -> HeadModel:
    """Build the textured head and torso layers for an identity at the output size."""
    work = 512
    photo, mask, pts = detect_source(identity % 2 == 1, work)
    if identity % 2 == 1:
        photo = _recolour(photo, mask, pts)
    head = build_head(photo, mask, pts, size)
    if identity % 2 == 1:  # other proportions: a narrower, longer face
        geom = head.geom.copy()
        geom[:, 0] *= 0.92
        geom[:, 1] *= 1.08
        head = replace(head, geom=geom)
    return head


def hair_rings(pts: np.ndarray, hair: tuple[float, float] = (1.0, 1.0)) -> list[np.ndarray]:
    """Rings of 3D points around the face oval (hair, jaw sides); `hair` scales top and sides."""
    oval = pts[FACE_OVAL]
    centre = oval[:, :2].mean(axis=0)
    face_w = float(np.ptp(oval[:, 0]))
    top, sides = hair
    rings = []
    for grow, depth in ((1.2, 0.25), (1.55, 0.5), (2.1, 0.55)):
        d = oval[:, :2] - centre
        up = np.clip(-d[:, 1] / np.abs(d).max(), 0.0, 1.0)  # 1 at the top of the head
        side = np.abs(d[:, 0]) / np.abs(d[:, 0]).max()
        lower = np.clip(d[:, 1] / np.abs(d).max(), 0.0, 1.0)
        reach = np.clip(top * up + sides * 0.8 * side - 1.2 * lower, 0.05, max(top, sides, 1.0))
        factor = 1.0 + (grow - 1.0) * reach
        xy = centre + d * factor[:, None]
        z = oval[:, 2] + depth * face_w * np.clip(1.0 - 0.6 * lower, 0.2, 1.0)
        rings.append(np.column_stack([xy, z]))
    return rings


def build_head(
    photo: np.ndarray,
    mask: np.ndarray,
    pts: np.ndarray,
    size: int,
    hair: tuple[float, float] = (1.0, 1.0),
) -> HeadModel:
    """The head and torso layers at `size` from a square photo, its person mask and landmarks."""
    from scipy.spatial import Delaunay

    work = photo.shape[0]
    scale = size / work
    photo = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    pts = pts * scale

    oval = pts[FACE_OVAL]
    centre = oval[:, :2].mean(axis=0)
    face_w = float(np.ptp(oval[:, 0]))
    # Rings around the face oval: hair above and at the sides, barely any below the chin.
    rings = hair_rings(pts, hair)
    allpts = np.vstack([pts, *rings])
    tri = Delaunay(allpts[:, :2]).simplices.astype(np.int32)

    # Pivot of the head rotation: behind the face, at the height of the ears.
    pivot = np.array([centre[0], pts[[234, 454], 1].mean(), pts[:, 2].min() + 0.75 * face_w])
    geom = allpts - pivot

    # Head layer alpha: the person mask inside the head hull; torso: the rest of the person.
    hull = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(allpts[:, :2]).astype(np.int32)), 255)  # type: ignore[call-overload]  # cv2/numpy stubs
    head_alpha = np.maximum(mask, _inside(pts[FACE_OVAL], size)) * (hull > 0)
    texture = np.dstack([photo, np.round(head_alpha * 255).astype(np.uint8)])
    # The torso keeps no trace of the face: above the nose the head's hull is cut out, below it
    # (neck, under the jaw) it is inpainted from its surroundings so no gap opens when the head
    # moves.
    rows = np.arange(size, dtype=np.float32)[:, None]
    grown = cv2.dilate(hull, np.ones((9, 9), np.uint8)) > 0
    oval = cv2.dilate(_inside(pts[FACE_OVAL], size), np.ones((7, 7), np.uint8)) > 0  # type: ignore[assignment]  # cv2/numpy stubs
    band = (rows < pts[152, 1] + 0.1 * face_w) & np.ones((1, size), bool)
    fill = oval & band & (rows > pts[1, 1])
    photo_torso = cv2.inpaint(photo, fill.astype(np.uint8) * 255, 7, cv2.INPAINT_TELEA)
    cut = cv2.GaussianBlur((grown & band & ~fill).astype(np.float32), (0, 0), 2)
    torso_alpha = np.maximum(mask, fill.astype(np.float32)) * (1.0 - cut)
    torso = np.dstack([photo_torso, np.round(np.clip(torso_alpha, 0, 1) * 255).astype(np.uint8)])

    # Jaw: points below the inner upper lip follow the jaw, fading out towards the ears.
    upper = pts[INNER_UPPER_LIP]
    order = np.argsort(upper[:, 0])
    ux, uy = upper[order, 0], upper[order, 1]
    mouth_c = pts[[13, 14], 0].mean()
    mouth_half = 0.5 * float(np.ptp(pts[[61, 291], 0]))
    ref_y = np.interp(allpts[:, 0], ux, uy)
    below_y = allpts[:, 1] - ref_y
    reach = mouth_half * 1.1 + np.clip(below_y, 0.0, None) * 0.9
    lens = np.clip(1.0 - ((allpts[:, 0] - mouth_c) / reach) ** 2, 0.0, 1.0)
    jaw_weight = np.where(below_y > -1.0, lens, 0.0)
    jaw_weight[UPPER_LIP] = 0.0
    jaw_weight[len(pts) :] *= 0.5  # the rings (neck, hair) barely follow
    jaw_span = 0.9 * mouth_half
    # Lips: a bump around the mouth centre; the lower part moves on its own for lip opening.
    mouth_y = pts[[13, 14], 1].mean()
    dx, dy = (allpts[:, 0] - mouth_c) / mouth_half, (allpts[:, 1] - mouth_y) / mouth_half
    lip_region = np.clip(1.0 - (dx / 1.15) ** 2 - (dy / 0.75) ** 2, 0.0, 1.0) ** 0.5
    mouth_field = np.clip(1.0 - (dx / 2.2) ** 2 - (dy / 1.5) ** 2, 0.0, 1.0)
    lip_region[len(pts) :] = 0.0
    mouth_field[len(pts) :] = 0.0
    lower_lip = np.where(below_y > -0.5, lip_region, 0.0)
    lower_lip[UPPER_LIP] = 0.0

    eye_sets = []
    for up_idx, lo_idx in EYES:
        up_a, lo_a = np.array(up_idx), np.array(lo_idx)
        xs = np.sort(pts[up_a, 0])
        yu = np.interp(pts[:, 0], *_contour(pts, up_a))
        yl = np.interp(pts[:, 0], *_contour(pts, lo_a))
        within = (pts[:, 0] > xs[0]) & (pts[:, 0] < xs[-1])
        inside = np.nonzero(within & (pts[:, 1] >= yu - 1.5) & (pts[:, 1] < yl - 0.25))[0]
        inside = np.setdiff1d(inside, lo_a)
        # the fold above the lid comes down too, so a closed eye shows skin, not stretched lashes
        crease = np.nonzero(within & (pts[:, 1] < yu - 1.5) & (pts[:, 1] > yu - (yl - yu) * 1.2))
        eye_sets.append((up_a, lo_a, inside, crease[0]))

    return HeadModel(
        texture=np.ascontiguousarray(texture),
        torso=np.ascontiguousarray(torso),
        uv=allpts[:, :2].astype(np.float32),
        geom=geom,
        pivot=pivot,
        triangles=tri,
        jaw_weight=jaw_weight,
        jaw_span=jaw_span,
        eye_sets=tuple(eye_sets),
        lip_region=lip_region,
        mouth_field=mouth_field,
        lower_lip=lower_lip,
    )


def _inside(poly: np.ndarray, size: int) -> np.ndarray:
    """A filled polygon as a float mask."""
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(poly[:, :2]).astype(np.int32)], 1)  # type: ignore[call-overload]  # cv2/numpy stubs
    return m.astype(np.float32)


def _contour(pts: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A lid contour as (x, y) sorted by x, for interpolation."""
    order = np.argsort(pts[idx, 0])
    return pts[idx[order], 0], pts[idx[order], 1]


# --- motion ------------------------------------------------------------------------------------


def _smooth_signal(
    rng: np.random.Generator, t: np.ndarray, norm_t: np.ndarray, limit: float
) -> np.ndarray:
    """Sum of slow sinusoids, stretched so that it spans [-0.96, 0.96] * limit on `norm_t`."""
    freqs = rng.uniform(0.12, 0.45, size=3)
    amps = rng.uniform(0.5, 1.0, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)

    def wave(x: np.ndarray) -> np.ndarray:
        return np.sum(amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * x + phases[:, None]), 0)

    ref = wave(norm_t)
    lo, hi = ref.min(), ref.max()
    return (wave(t) - 0.5 * (lo + hi)) / (0.5 * (hi - lo)) * 0.96 * limit


def head_motion(
    n: int, fps: int, still_s: float, seed: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (yaw, pitch, roll, tx, ty) (n, 5) and the still-segment flags (n,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    still = t < still_s
    moving_t = np.maximum(t - still_s, 0.0)
    span = max(n / fps - still_s, 6.0)
    norm_t = np.linspace(0.0, span, 400)
    cols = [
        _smooth_signal(rng, moving_t, norm_t, lim)
        for lim in (YAW_MAX, PITCH_MAX, ROLL_MAX, 0.03 * size, 0.02 * size)
    ]
    return np.stack(cols, axis=1), still


def blinks(n: int, fps: int, seed: int) -> np.ndarray:
    """Eye openness per frame (1 open, ~0 closed): blinks of ~0.2 s every 1.5-3.5 s."""
    rng = np.random.default_rng(seed + 7919)
    eye = np.ones(n)
    dur = max(3, round(0.24 * fps))
    shape = np.sin(np.linspace(0, np.pi, dur + 2)[1:-1]) ** 0.5
    t = rng.uniform(0.6, 1.4)
    while True:
        start = round(t * fps)
        if start + dur >= n:
            break
        eye[start : start + dur] = np.minimum(eye[start : start + dur], 1.0 - shape)
        t += rng.uniform(1.5, 3.5)
    return np.clip(eye, 0.0, 1.0)


# --- speech ------------------------------------------------------------------------------------


def speech(out: Path, text: str, voice: str, seconds: float) -> np.ndarray:
    """Write `seconds` of 16 kHz mono espeak-ng speech to `out`; returns the samples."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        raw, res = Path(tmp) / "raw.wav", Path(tmp) / "16k.wav"
        proc = subprocess.run(
            ["espeak-ng", "-v", voice, "-w", str(raw), text], capture_output=True, check=False
        )
        if proc.returncode != 0 or not raw.exists():
            raise MediaError("tts_failed", proc.stderr.decode(errors="replace")[-300:])
        run_ffmpeg(["-i", str(raw), "-ar", str(SAMPLE_RATE), "-ac", "1", str(res)])
        speech, _ = sf.read(str(res), dtype="float32")
    total = round(seconds * SAMPLE_RATE)
    gap = np.zeros(SAMPLE_RATE // 4, np.float32)
    parts, have = [], 0
    while have < total:  # loop the utterance (with a short pause) until it covers the clip
        parts += [speech, gap]
        have += len(speech) + len(gap)
    wave = np.concatenate(parts)[:total]
    fade = min(len(wave), SAMPLE_RATE // 50)
    wave[len(wave) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    sf.write(str(out), wave, SAMPLE_RATE, subtype="PCM_16")
    return wave


def envelope(wave: np.ndarray, n: int, fps: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mouth openness 0..1 per video frame: smoothed RMS envelope, zero while silent."""
    hop = sample_rate / fps
    rms = np.zeros(n)
    for i in range(n):
        seg = wave[int(i * hop) : int((i + 1) * hop)]
        rms[i] = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0
    rms = np.convolve(np.pad(rms, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    peak = np.percentile(rms, 95) if rms.max() > 0 else 1.0
    level = np.clip(rms / max(peak, 1e-6), 0.0, 1.0)
    gate = 0.12
    return np.clip((level - gate) / (1.0 - gate), 0.0, 1.0)


# --- rendering ---------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(-yaw) @ Rx(-pitch) @ Rz(roll), degrees (see the module docstring)."""
    a, b, c = np.radians([-yaw, -pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return ry @ rx @ rz


def _background(size: int, seed: int, identity: int) -> np.ndarray:
    """A static, smooth two-colour gradient with a soft vignette (float32 RGB)."""
    rng = np.random.default_rng(seed * 31 + identity * 1009 + 5)
    if identity % 2 == 1:
        c0, c1 = rng.uniform(20, 90, 3), rng.uniform(90, 160, 3) * [0.6, 1.0, 0.7]
    else:
        c0, c1 = rng.uniform(110, 200, 3), rng.uniform(40, 120, 3) * [0.7, 0.8, 1.0]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    g = np.clip(0.5 + (xx * np.cos(angle) + yy * np.sin(angle)), 0.0, 1.0)[..., None]
    bg = c0 * (1 - g) + c1 * g
    vignette = 1.0 - 0.25 * np.clip((xx**2 + yy**2) * 2.0, 0, 1)[..., None]
    return (bg * vignette).astype(np.float32)


def _deform(
    head: HeadModel, mouth_open: float, eye_open: float, lips: LipShape | None = None
) -> np.ndarray:
    """Neutral 3D points with the jaw opened, the lips shaped and the lids lowered."""
    g = head.geom.copy()
    if lips is not None:
        _shape_lips(head, g, lips)
    g[:, 1] += head.jaw_weight * head.jaw_span * mouth_open
    close = 0.97 * (1.0 - eye_open)
    if close > 0:
        for up, lo, inside, crease in head.eye_sets:
            lx, ly = _contour(g, lo)
            ux, uy = _contour(g, up)
            idx = np.concatenate([up, inside])
            yl = np.interp(g[idx, 0], lx, ly)
            g[idx, 1] = yl - (1.0 - close) * (yl - g[idx, 1])
            gap = np.interp(g[crease, 0], lx, ly) - np.interp(g[crease, 0], ux, uy)
            g[crease, 1] += 0.6 * close * gap
    return g


def _shape_lips(head: HeadModel, g: np.ndarray, lips: LipShape) -> None:
    """Press, spread or round the lips and drop the lower lip, in place (before the jaw)."""
    half = 0.5 * float(np.linalg.norm(g[291, :2] - g[61, :2]))
    centre_x = 0.5 * float(g[61, 0] + g[291, 0])
    rest_gap = float(g[14, 1] - g[13, 1])
    if lips.press > 0:  # the rest gap closes, mostly by the lower lip rising
        g[:, 1] -= head.lower_lip * 0.7 * rest_gap * lips.press
        upper = np.zeros(len(g))
        upper[UPPER_LIP] = head.lip_region[UPPER_LIP]
        g[:, 1] += upper * 0.3 * rest_gap * lips.press
    if lips.spread != 0:  # corners out (spread) or in and forward (rounded)
        g[:, 0] += lips.spread * 0.3 * (g[:, 0] - centre_x) * head.mouth_field
        if lips.spread < 0:
            g[:, 2] -= -lips.spread * 0.35 * half * head.lip_region
    if lips.lower > 0:
        g[:, 1] += head.lower_lip * 0.3 * half * lips.lower


def _project(
    head: HeadModel, g: np.ndarray, rot: np.ndarray, tx: float, ty: float, focal: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the pivot and project: image points (N, 2) and camera-relative depth (N,)."""
    cam = g @ rot.T
    depth = focal + cam[:, 2]
    xy = cam[:, :2] * (focal / depth)[:, None]
    xy[:, 0] += head.pivot[0] + tx
    xy[:, 1] += head.pivot[1] + ty
    return xy, cam[:, 2]


def _warp_head(
    head: HeadModel, xy: np.ndarray, depth: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """Piecewise-affine warp of the head texture: (RGB float, alpha float, top-left) or None."""
    tri = head.triangles
    p = xy[tri]  # (M, 3, 2)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (
        p[:, 1, 1] - p[:, 0, 1]
    )
    q = head.uv[tri].astype(np.float64)
    area0 = (q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1]) - (q[:, 2, 0] - q[:, 0, 0]) * (
        q[:, 1, 1] - q[:, 0, 1]
    )
    keep = (area * np.sign(area0)) > 1e-3  # back faces and collapsed triangles are culled
    if not keep.any():
        return None
    idx = np.nonzero(keep)[0]
    idx = idx[np.argsort(-depth[tri[idx]].mean(axis=1))]  # far first: painter's order
    x0, y0 = np.floor(xy.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    ids = np.full((y1 - y0, x1 - x0), -1, np.int32)
    origin = np.array([x0, y0], np.float64)
    polys = np.round((p[idx] - origin) * 16).astype(np.int32)
    for k, poly in zip(idx, polys, strict=True):
        cv2.fillConvexPoly(ids, poly, int(k), lineType=cv2.LINE_8, shift=4)  # type: ignore[call-overload]  # cv2/numpy stubs
    # Affine maps destination -> texture for every triangle: A = Q @ inv(P_h).
    ph = np.concatenate([p - origin, np.ones((len(tri), 3, 1))], axis=2)  # (M, 3, 3)
    ph[~keep] = np.eye(3)
    aff = np.swapaxes(q, 1, 2) @ np.linalg.inv(np.swapaxes(ph, 1, 2))  # (M, 2, 3)
    inside = ids >= 0
    tid = np.where(inside, ids, 0)
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    a = aff[tid].astype(np.float32)  # (h, w, 2, 3)
    mx = a[..., 0, 0] * xx + a[..., 0, 1] * yy + a[..., 0, 2]
    my = a[..., 1, 0] * xx + a[..., 1, 1] * yy + a[..., 1, 2]
    mx[~inside] = -10.0
    my[~inside] = -10.0
    warped = cv2.remap(  # type: ignore[call-overload]  # cv2/numpy stubs
        head.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    alpha = warped[..., 3].astype(np.float32) / 255.0 * inside
    return warped[..., :3].astype(np.float32), alpha, (x0, y0)


def _composite(dst: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, at: tuple[int, int]) -> None:
    """Alpha-blend a patch into dst (float32, in place)."""
    x0, y0 = at
    h, w = alpha.shape
    region = dst[y0 : y0 + h, x0 : x0 + w]
    region += (rgb - region) * alpha[..., None]


def _mouth_interior(frame: np.ndarray, xy: np.ndarray, mouth_open: float) -> None:
    """Paint the open mouth: dark cavity with a hint of upper teeth."""
    if mouth_open <= 0.02:
        return
    upper = xy[INNER_UPPER_LIP]
    lower = xy[INNER_LOWER_LIP][::-1]
    poly = np.round(np.vstack([upper, lower]) * 16).astype(np.int32)
    cv2.fillPoly(frame, [poly], (45.0, 12.0, 18.0), lineType=cv2.LINE_AA, shift=4)
    gap = float(np.median(xy[INNER_LOWER_LIP[2:-2], 1] - xy[INNER_UPPER_LIP[2:-2], 1]))
    if gap > 6:
        teeth = np.vstack([upper[2:-2], upper[2:-2][::-1] + np.array([0.0, min(0.22 * gap, 6.0)])])
        t16 = np.round(teeth * 16).astype(np.int32)
        cv2.fillPoly(frame, [t16], (215.0, 210.0, 200.0), lineType=cv2.LINE_AA, shift=4)


def generate(
    out_dir: Path,
    seconds: float = 8.0,
    size: int = 512,
    fps: int = 25,
    voice: str = "en",
    text: str | None = None,
    seed: int = 0,
    identity: int = 0,
    second_face: bool = False,
    still_head_s: float = 1.5,
    audio: bool = True,
) -> SyntheticClip:
    """Render a talking-head clip with its per-frame truth into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = int(size) // 2 * 2
    n = max(1, round(seconds * fps))
    wav_path = out_dir / "audio.wav"
    wave = speech(wav_path, text or DEFAULT_TEXT, voice, n / fps)
    mouth = envelope(wave, n, fps)
    eye = blinks(n, fps, seed)
    pose, still = head_motion(n, fps, still_head_s, seed, size)
    head = _head(identity, size)
    focal = 0.5 * size / np.tan(np.radians(15.0))

    background = _background(size, seed, identity)
    if second_face:
        _add_second_face(background, head, size, focal)

    video_path = out_dir / "video.mp4"
    rotations, landmarks = render_video(
        video_path, head, background, pose, mouth, eye, fps, wav_path if audio else None
    )

    truth_path = out_dir / "truth.npz"
    np.savez(
        truth_path,
        yaw=pose[:, 0].astype(np.float32),
        pitch=pose[:, 1].astype(np.float32),
        roll=pose[:, 2].astype(np.float32),
        tx=pose[:, 3].astype(np.float32),
        ty=pose[:, 4].astype(np.float32),
        mouth_open=mouth.astype(np.float32),
        eye_open=eye.astype(np.float32),
        still=still,
        rotation=rotations.astype(np.float32),
        landmarks=landmarks,
        fps=np.int64(fps),
        size=np.int64(size),
        focal=np.float64(focal),
        identity=np.int64(identity),
    )
    return SyntheticClip(video=video_path, truth=truth_path, audio=wav_path)


def render_video(
    video_path: Path,
    head: HeadModel,
    background: np.ndarray,
    pose: np.ndarray,
    mouth: np.ndarray,
    eye: np.ndarray,
    fps: int,
    wav_path: Path | None,
    lips: list[LipShape] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render and encode the frames (H.264; AAC from `wav_path` if given).

    Returns the head rotations (n, 3, 3) and the projected 478 landmarks (n, 478, 2).
    """
    size = background.shape[0]
    n = len(pose)
    focal = 0.5 * size / np.tan(np.radians(15.0))
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "-",
    ]  # fmt: skip
    if wav_path is not None:
        cmd += ["-i", str(wav_path), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-c:a", "aac", "-b:a", "128k"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]
    cmd += ["-r", str(fps), "-movflags", "+faststart", str(video_path)]

    rotations = np.zeros((n, 3, 3))
    landmarks = np.zeros((n, 478, 2), np.float32)
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errlog)
        assert proc.stdin is not None
        try:
            for i in range(n):
                yaw, pitch, roll, tx, ty = pose[i]
                rot = _rotation(yaw, pitch, roll)
                rotations[i] = rot
                frame = background.copy()
                shift = np.float32([[1, 0, TORSO_FOLLOW * tx], [0, 1, TORSO_FOLLOW * ty]])  # type: ignore[arg-type]  # cv2/numpy stubs
                torso = cv2.warpAffine(head.torso, shift, (size, size), flags=cv2.INTER_LINEAR)  # type: ignore[call-overload]  # cv2/numpy stubs
                _composite(frame, torso[..., :3].astype(np.float32), torso[..., 3] / 255.0, (0, 0))
                g = _deform(head, float(mouth[i]), float(eye[i]), lips[i] if lips else None)
                xy, depth = _project(head, g, rot, tx, ty, focal)
                landmarks[i] = xy[:478]
                warped = _warp_head(head, xy, depth, size)
                if warped is not None:
                    _composite(frame, *warped)
                _mouth_interior(frame, xy, float(mouth[i]))
                proc.stdin.write(np.clip(frame, 0, 255).astype(np.uint8).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        code = proc.wait()
        if code != 0:
            errlog.seek(0)
            message = errlog.read().decode(errors="replace").strip()[-500:]
            raise MediaError("encode_failed", message or "ffmpeg failed")

    return rotations, landmarks


def _add_second_face(background: np.ndarray, head: HeadModel, size: int, focal: float) -> None:
    """Paint a static, smaller copy of the neutral head into the top-left corner."""
    g = _deform(head, 0.0, 1.0)
    xy, depth = _project(head, g, np.eye(3), 0.0, 0.0, focal)
    warped = _warp_head(head, xy, depth, size)
    if warped is None:
        return
    rgb, alpha, _ = warped
    h, w = alpha.shape
    sw, sh = max(2, round(w * SECOND_FACE_SCALE)), max(2, round(h * SECOND_FACE_SCALE))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    small_a = cv2.resize(alpha, (sw, sh), interpolation=cv2.INTER_AREA)
    margin = round(0.03 * size)
    _composite(background, small, small_a, (margin, margin))
