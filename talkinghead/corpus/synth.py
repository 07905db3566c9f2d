"""Synthetic multi-identity corpus: procedural faces speaking espeak-ng sentences, with truth.

Each identity (see `identities`) repaints the one source photo (skin, hair, lips, irises,
clothes, accessories), reshapes its 3D face mesh, and speaks its own language and voice. The
mouth follows coarticulated viseme weights from the phoneme timeline, so lip shape (closed,
rounded, spread, open) carries information that loudness does not. Rendering, head motion and
blinks are those of `talkinghead.synthetic`.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import cv2
import numpy as np

from talkinghead.corpus.identities import Appearance, Identity, make_identity, sentence
from talkinghead.corpus.phonemes import (
    SAMPLE_RATE,
    VISEMES,
    Articulation,
    Phone,
    coarticulate,
    synthesize,
)
from talkinghead.preprocess.features import OUTER_LIPS
from talkinghead.synthetic import (
    EYES,
    FACE_OVAL,
    INNER_LOWER_LIP,
    INNER_UPPER_LIP,
    HeadModel,
    LipShape,
    blinks,
    build_head,
    detect_source,
    hair_rings,
    head_motion,
    render_video,
)

FPS = 25
LICENCE = "synthetic, CC0"
WORK = 512  # texture work size (the source photo's detection size)
LEAD_S, TAIL_S = 0.3, 0.3  # silence before and after the speech of a clip
# Mouth targets per internal class (VISEMES order, then silence): jaw opening, extra lower-lip
# drop, spread (> 0 wide, < 0 rounded) and press. Rounded and spread open about equally, so
# only the lip corners tell them apart.
TARGETS = np.array(
    [
        [0.18, 0.10, 0.00, 0.15],  # neutral consonants: a small partial opening
        [0.00, 0.00, -0.05, 1.00],  # closed: lips pressed
        [0.30, 0.30, -1.00, 0.00],  # rounded
        [0.28, 0.20, 1.00, 0.00],  # spread
        [0.85, 0.60, 0.25, 0.00],  # open
        [0.00, 0.00, 0.00, 0.50],  # silence: lips at rest, together
    ]
)
CLIP_FILES = ("video.mp4", "audio.wav", "truth.npz")


@dataclass(frozen=True)
class ClipPlan:
    """What one utterance clip will be: identity, index and the target length."""

    identity: Identity
    utterance: int
    seconds: float

    @property
    def rel_dir(self) -> Path:
        """The clip's folder relative to the corpus root."""
        return Path("clips") / self.identity.name / f"utt{self.utterance:03d}"


# --- appearance --------------------------------------------------------------------------------


def _poly_mask(shape: tuple[int, ...], poly: np.ndarray) -> np.ndarray:
    """A filled polygon as a float32 mask."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly[:, :2]).astype(np.int32)], 1)  # type: ignore[call-overload]  # cv2/numpy stubs
    return m.astype(np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Low-frequency noise with zero mean and unit standard deviation."""
    n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return (n - n.mean()) / max(float(n.std()), 1e-6)


def _blend(img: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> None:
    """img = img * (1 - w) + colour * w, in place (colour per pixel or constant)."""
    img *= 1.0 - weight[..., None]
    img += colour * weight[..., None]


def _shaded(lum: np.ndarray, region: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    """A colour (0..1) shaded by the photo's luminance relative to its median in `region`."""
    ref = float(np.median(lum[region > 0.5])) if (region > 0.5).any() else 128.0
    shade = np.clip(lum / max(ref, 1.0), 0.0, 1.8)[..., None]
    return np.asarray(rgb, np.float32) * 255.0 * shade


@dataclass(frozen=True)
class _Regions:
    """Masks (float32, WORK x WORK) and measures of the source photo used for repainting."""

    lum: np.ndarray  # luminance: the photo's shading, kept under every new colour
    rows: np.ndarray  # the row index of every pixel
    oval: np.ndarray
    eyes: np.ndarray
    lips: np.ndarray
    inner: np.ndarray  # the mouth opening
    skin_core: np.ndarray  # the face without eyes and lips
    face_w: float
    chin_y: float


def _regions(photo: np.ndarray, pts: np.ndarray) -> _Regions:
    """The face, eye, lip and mouth masks of the photo from its landmarks."""
    shape = (int(photo.shape[0]), int(photo.shape[1]))
    img = photo.astype(np.float32)
    eyes = np.max([_poly_mask(shape, pts[np.r_[up, lo[::-1]]]) for up, lo in EYES], axis=0)
    eyes = cv2.dilate(eyes, np.ones((3, 3), np.uint8))
    oval = _poly_mask(shape, pts[FACE_OVAL])
    inner = _poly_mask(shape, pts[np.r_[INNER_UPPER_LIP, INNER_LOWER_LIP[::-1]]])
    lips = np.clip(_poly_mask(shape, pts[OUTER_LIPS]) - inner, 0.0, 1.0)
    return _Regions(
        lum=img @ np.array([0.299, 0.587, 0.114], np.float32),
        rows=np.arange(shape[0], dtype=np.float32)[:, None] * np.ones((1, shape[1]), np.float32),
        oval=oval,
        eyes=eyes,
        lips=lips,
        inner=inner,
        skin_core=oval * (1 - eyes) * (1 - lips) * (1 - inner),
        face_w=float(np.ptp(pts[FACE_OVAL, 0])),
        chin_y=float(pts[152, 1]),
    )


def _circle(mask: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Draw a filled circle of ones into a float mask, in place."""
    cv2.circle(mask, (round(float(centre[0])), round(float(centre[1]))), round(radius), (1.0,), -1)


def _paint_skin(
    img: np.ndarray, photo: np.ndarray, mask: np.ndarray, pts: np.ndarray, r: _Regions,
    app: Appearance, rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """New skin tone, albedo noise and cheeks, lips and irises; returns the skin mask."""
    # Skin: everything of the person that looks like the photo's facial skin (face, neck, ears).
    lab = cv2.cvtColor(photo, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_ab = np.median(lab[r.skin_core > 0.5][:, 1:], axis=0)
    near = np.linalg.norm(lab[..., 1:] - ref_ab, axis=-1) < 14.0
    below = r.rows > r.chin_y - 0.1 * r.face_w
    skin = np.clip(np.maximum(r.skin_core, near * mask * below), 0, 1)
    skin *= (1 - r.eyes) * (1 - np.clip(r.lips + r.inner, 0, 1))
    skin = cv2.GaussianBlur(skin.astype(np.float32), (0, 0), 1.5)
    albedo = 1.0 + app.albedo_strength * _noise(rng, r.lum.shape, 0.06 * r.face_w)
    skin_rgb = _shaded(r.lum, r.skin_core, app.skin) * albedo[..., None]
    cheeks = np.zeros(r.lum.shape, np.float32)
    for idx in (205, 425):
        _circle(cheeks, pts[idx], 0.09 * r.face_w)
    cheeks = cv2.GaussianBlur(cheeks, (0, 0), 0.06 * r.face_w) * app.cheek_strength
    cheek_rgb = _shaded(r.lum, r.skin_core, app.cheek)
    skin_rgb = skin_rgb * (1 - cheeks[..., None]) + cheek_rgb * cheeks[..., None]
    _blend(img, skin_rgb, skin)

    _blend(img, _shaded(r.lum, r.lips, app.lips), cv2.GaussianBlur(r.lips, (0, 0), 1.0))
    iris = np.zeros(r.lum.shape, np.float32)
    for centre, edge in ((468, 469), (473, 474)):
        _circle(iris, pts[centre], max(2.0, float(np.linalg.norm(pts[centre, :2] - pts[edge, :2]))))
    iris *= cv2.erode(r.eyes, np.ones((3, 3), np.uint8))
    _blend(img, _shaded(r.lum, iris, app.iris) * 0.8, cv2.GaussianBlur(iris, (0, 0), 0.8))
    return np.asarray(skin, np.float32)


def _paint_hair(
    img: np.ndarray, pts: np.ndarray, r: _Regions, app: Appearance, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A new procedural head of hair inside the outer ring (and a hat band); (hair, light)."""
    top, sides, strands = app.hair_extent
    outer = hair_rings(pts, (top, sides))[-1]
    hair_poly = _poly_mask(r.lum.shape, outer)
    above_chin = r.rows < r.chin_y - 0.15 * r.face_w
    grown_oval = cv2.dilate(r.oval, np.ones((5, 5), np.uint8))
    hair = np.clip(hair_poly * above_chin - grown_oval, 0, 1).astype(np.float32)
    hair = np.asarray(cv2.GaussianBlur(hair, (0, 0), 2.0), np.float32)
    h, w = r.lum.shape
    streak = cv2.resize(_noise(rng, (h // 8, w), 1.0 + 2.0 * strands), (w, h))
    y0 = float(outer[:, 1].min())
    light = 1.1 - 0.4 * np.clip((r.rows - y0) / (r.chin_y - y0), 0, 1)
    hair_rgb = np.asarray(app.hair, np.float32) * 255.0 * (light * (1 + 0.18 * streak))[..., None]
    _blend(img, hair_rgb, hair)
    if app.hat is not None:  # a band across the top of the hair, well above the eyes
        band = hair_poly * (r.rows > y0 + 0.12 * r.face_w) * (r.rows < y0 + 0.32 * r.face_w)
        _blend(img, np.asarray(app.hat, np.float32) * 255.0 * light[..., None], band)
    return hair, light


def _paint_accessories(img: np.ndarray, pts: np.ndarray, r: _Regions, app: Appearance) -> None:
    """Glasses over the eyes and earrings below the ears (the mouth stays free)."""
    if app.glasses is not None:
        colour = tuple(float(c) * 255.0 for c in app.glasses)
        thick = max(2, round(0.018 * r.face_w))
        centres = []
        for up, lo in EYES:
            contour = pts[np.r_[up, lo], :2]
            c, half = contour.mean(axis=0), 0.5 * float(np.ptp(contour[:, 0]))
            centres.append((round(float(c[0])), round(float(c[1]))))
            axes = (round(1.35 * half), round(0.95 * half))
            cv2.ellipse(img, centres[-1], axes, 0, 0, 360, colour, thick)
        cv2.line(img, centres[0], centres[1], colour, thick)
    if app.earrings is not None:
        colour = tuple(float(c) * 255.0 for c in app.earrings)
        for idx, side in ((132, -1.0), (361, 1.0)):
            x = round(float(pts[idx, 0]) + side * 0.02 * r.face_w)
            y = round(float(pts[idx, 1]) + 0.02 * r.face_w)
            cv2.circle(img, (x, y), max(2, round(0.03 * r.face_w)), colour, -1)


def paint_identity(identity: Identity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The identity's texture (WORK x WORK RGB uint8), person mask and source landmarks."""
    app = identity.appearance
    photo, mask, pts = detect_source(app.mirror, WORK)
    rng = np.random.default_rng(app.albedo_seed)
    r = _regions(photo, pts)
    img = photo.astype(np.float32)
    skin = _paint_skin(img, photo, mask, pts, r, app, rng)
    hair, _ = _paint_hair(img, pts, r, app, rng)
    # Clothes: the body below the chin that is not skin keeps its shading, takes a new colour.
    body = mask * (r.rows > r.chin_y + 0.05 * r.face_w) * (1 - skin)
    _blend(img, _shaded(r.lum, body, app.clothing) * 0.8, body)
    _paint_accessories(img, pts, r, app)
    # The person: body below the chin, the face, and the new hair (old hair outside it goes).
    person = np.maximum(mask * (r.rows > r.chin_y - 0.1 * r.face_w), np.maximum(r.oval, hair))
    return np.clip(img, 0, 255).astype(np.uint8), person.astype(np.float32), pts


def _reshape(head: HeadModel, geo: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Apply the geometry factors (width, length, jaw, nose, eye spacing, lips) to points g."""
    fw, fl, jw, nl, es, lt = geo
    g = g.copy()
    mid_x = 0.5 * (g[33, 0] + g[263, 0])
    nose_y, chin_y, bridge_y = g[2, 1], g[152, 1], g[168, 1]
    # Jaw: the lower face widens or narrows more the lower it is.
    low = np.clip((g[:, 1] - nose_y) / (chin_y - nose_y), 0.0, 1.0)
    g[:, 0] = mid_x + (g[:, 0] - mid_x) * (1.0 + (jw - 1.0) * low)
    # Nose: points between the bridge and the nose bottom stretch downwards from the bridge.
    span_x = 0.3 * float(np.ptp(g[FACE_OVAL, 0]))
    near = np.clip(1.0 - ((g[:, 0] - g[1, 0]) / span_x) ** 2, 0.0, 1.0)
    along = np.clip((g[:, 1] - bridge_y) / (nose_y - bridge_y), 0.0, 1.0)
    g[:, 1] += (nl - 1.0) * (nose_y - bridge_y) * along * near * (g[:, 1] < nose_y + 4)
    # Eyes: each eye region moves sideways from the midline.
    for up, lo in EYES:
        ring = np.r_[up, lo]
        c = g[ring, :2].mean(axis=0)
        rad = 1.1 * float(np.ptp(g[ring, 0]))
        w = np.clip(1.0 - np.sum((g[:, :2] - c) ** 2, axis=1) / rad**2, 0.0, 1.0)
        g[:, 0] += (es - 1.0) * (c[0] - mid_x) * w
    # Lips: thicker or thinner about the mouth line.
    mouth_y = 0.5 * (g[13, 1] + g[14, 1])
    g[:, 1] = mouth_y + (g[:, 1] - mouth_y) * (1.0 + (lt - 1.0) * head.lip_region)
    g[:, 0] *= fw
    g[:, 1] *= fl
    return g


@lru_cache(maxsize=4)
def identity_head(identity: Identity, size: int) -> HeadModel:
    """The identity's textured head, torso and reshaped mesh at the output size."""
    texture, person, pts = paint_identity(identity)
    top, sides, _ = identity.appearance.hair_extent
    head = build_head(texture, person, pts, size, hair=(top, sides))
    geo = np.array(list(asdict(identity.geometry).values()), dtype=np.float64)
    return replace(head, geom=_reshape(head, geo, head.geom))


def identity_background(identity: Identity, size: int) -> np.ndarray:
    """A static gradient with soft blobs in the identity's colours (float32 RGB)."""
    c0, c1, angle = identity.appearance.background
    rng = np.random.default_rng([identity.seed, identity.index, 99])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    g = np.clip(0.5 + (xx * np.cos(angle) + yy * np.sin(angle)), 0.0, 1.0)[..., None]
    bg = np.asarray(c0, np.float32) * 255 * (1 - g) + np.asarray(c1, np.float32) * 255 * g
    for _ in range(3):
        cx, cy, r = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        bg = bg * (1 - 0.35 * blob) + rng.uniform(30, 230, 3).astype(np.float32) * 0.35 * blob
    return np.asarray(bg, np.float32)


# --- speech and mouth --------------------------------------------------------------------------


def _speech(
    identity: Identity, rng: np.random.Generator, seconds: float
) -> tuple[np.ndarray, list[Phone], str]:
    """Sentences spoken one by one (short pauses between) until about `seconds` are filled."""
    style = identity.style
    waves: list[np.ndarray] = []
    phones: list[Phone] = []
    texts: list[str] = []
    t = 0.0
    for _ in range(40):
        text = sentence(identity.language, rng)
        utt = synthesize(text, identity.voice, rate=style.rate, pitch=style.pitch)
        if texts and t > 0.7 * seconds and t + utt.duration_s > seconds + 1.0:
            break  # close enough: a whole sentence more would overshoot
        phones += [Phone(p.start_s + t, p.end_s + t, p.phoneme) for p in utt.phones]
        gap = np.zeros(round(rng.uniform(0.15, 0.45) * SAMPLE_RATE), np.float32)
        waves += [utt.wave, gap]
        texts.append(text)
        t += utt.duration_s + len(gap) / SAMPLE_RATE
        if t >= seconds:
            break
    wave = np.concatenate(waves[:-1])  # no pause after the last sentence
    return wave, phones, " ".join(texts)


def mouth_params(
    identity: Identity, art: Articulation, rng: np.random.Generator
) -> tuple[np.ndarray, list[LipShape], np.ndarray]:
    """Jaw opening (T,), lip shapes and the (T, 4) parameters from the viseme classes."""
    style = identity.style
    vary = 1.0 + style.variation * rng.uniform(-1.0, 1.0, 3)  # this utterance's manner
    params = art.classes.astype(np.float64) @ TARGETS
    params[:, 0] *= style.amplitude * vary[0]
    params[:, 1] *= style.amplitude * vary[0]
    spread = params[:, 2]
    params[:, 2] = np.where(
        spread > 0, spread * style.spreading * vary[1], spread * style.rounding * vary[2]
    )
    params[:, 3] = np.clip(params[:, 3], 0.0, 1.0)
    lips = [LipShape(lower=float(p[1]), spread=float(p[2]), press=float(p[3])) for p in params]
    return np.clip(params[:, 0], 0.0, 1.0), lips, params.astype(np.float32)


# --- clips and corpus --------------------------------------------------------------------------


def synth_clip(plan: ClipPlan, out_dir: Path, size: int = 256, fps: int = FPS) -> Path:
    """Render one utterance clip (video.mp4, audio.wav, truth.npz) into `out_dir`."""
    import soundfile as sf

    identity, style = plan.identity, plan.identity.style
    rng = np.random.default_rng([identity.seed, identity.index, plan.utterance, 17])
    clip_seed = int(rng.integers(0, 2**31 - 1))
    speech, phones, text = _speech(identity, rng, plan.seconds - LEAD_S - TAIL_S)
    lead, tail = round(LEAD_S * SAMPLE_RATE), round(TAIL_S * SAMPLE_RATE)
    n = round((lead + len(speech) + tail) / SAMPLE_RATE * fps)
    wave = np.zeros(round(n / fps * SAMPLE_RATE), np.float32)
    body = speech[: len(wave) - lead]
    wave[lead : lead + len(body)] = body * (0.8 / max(float(np.abs(body).max()), 1e-6))
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_path = out_dir / "audio.wav"
    sf.write(str(wav_path), wave, SAMPLE_RATE, subtype="PCM_16")

    art = coarticulate(phones, n, fps, style.lag_s, style.smooth_s, offset_s=LEAD_S)
    mouth, lips, params = mouth_params(identity, art, rng)
    eye = blinks(n, fps, clip_seed)
    pose, _ = head_motion(n, fps, 0.0, clip_seed, size)
    pose[:, :3] *= style.head_motion
    head = identity_head(identity, size)
    background = identity_background(identity, size)
    rotations, landmarks = render_video(
        out_dir / "video.mp4", head, background, pose, mouth, eye, fps, wav_path, lips
    )
    np.savez_compressed(
        out_dir / "truth.npz",
        **clip_truth(identity, art, params, pose, eye, landmarks, phones),
        rotation=rotations.astype(np.float32),
        mouth_open=mouth.astype(np.float32),
        text=np.str_(text),
        fps=np.int64(fps),
        size=np.int64(size),
        focal=np.float64(0.5 * size / np.tan(np.radians(15.0))),
        lead_s=np.float64(LEAD_S),
    )
    return out_dir


def clip_truth(
    identity: Identity,
    art: Articulation,
    params: np.ndarray,
    pose: np.ndarray,
    eye: np.ndarray,
    landmarks: np.ndarray,
    phones: list[Phone],
) -> dict[str, np.ndarray]:
    """The per-frame truth arrays of a clip (pose, visemes, lips, eyes, landmarks, labels)."""
    lm = landmarks.astype(np.float64)
    return {
        "yaw": pose[:, 0].astype(np.float32),
        "pitch": pose[:, 1].astype(np.float32),
        "roll": pose[:, 2].astype(np.float32),
        "tx": pose[:, 3].astype(np.float32),
        "ty": pose[:, 4].astype(np.float32),
        "visemes": art.weights,
        "dominant": art.dominant.astype(np.int64),
        "viseme_names": np.array(VISEMES),
        "speaking": art.speaking,
        "lip_params": params,  # jaw opening, lower lip, spread, press (after style)
        "lip_open": np.linalg.norm(lm[:, 14] - lm[:, 13], axis=1).astype(np.float32),
        "lip_width": np.linalg.norm(lm[:, 291] - lm[:, 61], axis=1).astype(np.float32),
        "eye_open": eye.astype(np.float32),
        "blink": (eye < 0.5),
        "landmarks": landmarks.astype(np.float32),
        "phone_start": np.array([p.start_s + LEAD_S for p in phones], np.float32),
        "phone_end": np.array([p.end_s + LEAD_S for p in phones], np.float32),
        "phones": np.array([p.phoneme for p in phones]),
        "style": np.array(list(asdict(identity.style).values()), np.float64),
        "style_names": np.array(list(asdict(identity.style))),
        "identity": np.int64(identity.index),
        "voice": np.str_(identity.voice),
        "language": np.str_(identity.language),
    }


def plan_corpus(
    identities: int, minutes: float, seed: int, clip_seconds: tuple[float, float]
) -> list[ClipPlan]:
    """The clips of a corpus: each identity gets minutes / identities, in clips of random length."""
    lo, hi = clip_seconds
    budget = minutes * 60.0 / identities
    plans = []
    for index in range(identities):
        identity = make_identity(seed, index)
        rng = np.random.default_rng([seed, index, 4242])
        total, utt = 0.0, 0
        while total < budget - 0.5:
            seconds = min(float(rng.uniform(lo, hi)), max(lo, budget - total))
            plans.append(ClipPlan(identity, utt, round(seconds, 3)))
            total += seconds
            utt += 1
    return plans


def _make_clip(plan: ClipPlan, out_dir: Path, size: int) -> None:
    """Render one planned clip into place; a crash leaves no half clip behind."""
    final = out_dir / plan.rel_dir
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    synth_clip(plan, staging, size=size)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def synth_corpus(
    out_dir: Path,
    identities: int = 48,
    minutes: float = 60.0,
    seed: int = 0,
    size: int = 256,
    clip_seconds: tuple[float, float] = (6, 12),
    progress: Callable[[int, int], None] | None = None,
    jobs: int = 1,
) -> Path:
    """Write a synthetic corpus (clips, sources.csv, identities.json); returns sources.csv.

    Deterministic by seed (whatever `jobs`, the number of clip-rendering processes); clips
    whose files already exist are skipped, so a rerun resumes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(identities, minutes, seed, clip_seconds)
    todo = [p for p in plans if not all((out_dir / p.rel_dir / n).is_file() for n in CLIP_FILES)]
    done = len(plans) - len(todo)
    if progress is not None:
        progress(done, len(plans))
    make = partial(_make_clip, out_dir=out_dir, size=size)
    if jobs > 1 and len(todo) > 1:
        # Fork: the children inherit the imported modules; each clip depends only on its plan.
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for _ in pool.imap_unordered(make, todo):
                done += 1
                if progress is not None:
                    progress(done, len(plans))
    else:
        for plan in todo:
            make(plan)
            done += 1
            if progress is not None:
                progress(done, len(plans))
    people = [make_identity(seed, i) for i in range(identities)]
    (out_dir / "identities.json").write_text(
        json.dumps([p.to_json() for p in people], indent=1, ensure_ascii=False), "utf-8"
    )
    csv_path = out_dir / "sources.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "identity", "speaker", "language", "licence"])
        for plan in plans:
            ident = plan.identity
            path = (plan.rel_dir / "video.mp4").as_posix()
            writer.writerow([path, ident.name, ident.voice, ident.language, LICENCE])
    return csv_path
