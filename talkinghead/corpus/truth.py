"""Checks of the synthetic corpus against what face tracking sees in its videos.

Three questions, each on landmarks tracked from the encoded video the way real footage is
tracked: do tracked lip opening and width follow the rendered truth; does tracked lip shape
tell the visemes apart beyond what mouth opening alone does (a classifier trained on some
identities, tested on others); and do the face regions of different identities differ
(nearest-neighbour identity matching on colour and proportions inside the face only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from talkinghead.corpus.phonemes import CLOSED, OPEN, ROUNDED, SPREAD
from talkinghead.preprocess.features import OUTER_LIPS
from talkinghead.preprocess.landmarks import FaceMeshDetector
from talkinghead.preprocess.pose import STABLE_POINTS, reference_shape
from talkinghead.preprocess.tracking import (
    identity_descriptor,
    interpolate_gaps,
    select_main_subject,
)
from talkinghead.synthetic import FACE_OVAL, INNER_LOWER_LIP, INNER_UPPER_LIP

SHAPE_CLASSES = (CLOSED, ROUNDED, SPREAD, OPEN)
MOUTH_POINTS = np.unique(np.r_[OUTER_LIPS, INNER_UPPER_LIP, INNER_LOWER_LIP])
# Patches sampled for skin, lip and eye colour: forehead, cheeks, nose, chin, lips, eyes.
COLOUR_POINTS = (151, 205, 425, 4, 199, 0, 17, 468, 473, 50, 280)
HIST_BINS = 6  # per axis of the face's a*b* histogram


@dataclass(frozen=True)
class TrackedClip:
    """Landmarks tracked in a clip's video and a descriptor of its face region."""

    points: np.ndarray  # (T, 478, 3) float32 pixel units, NaN where not valid
    valid: np.ndarray  # (T,) bool
    face: np.ndarray  # (K,) identity descriptor of the face region (colour + proportions)


def track_video(path: Path, every: int = 5) -> TrackedClip:
    """Track the face in every frame; the face descriptor uses every `every`-th frame."""
    import av

    per_frame, colours = [], []
    with av.open(str(path)) as container, FaceMeshDetector(max_faces=1) as det:
        for i, frame in enumerate(container.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")
            found = det.detect(rgb)
            per_frame.append(found[:1])
            if found and i % every == 0:
                colours.append(face_colours(rgb, found[0].points))
    track = select_main_subject(per_frame)
    points, valid = interpolate_gaps(track.points, track.found)
    shape = np.nanmedian(identity_descriptor(points[valid]), axis=0) if valid.any() else None
    colour = np.median(np.array(colours), axis=0) if colours else None
    if shape is None or colour is None:
        return TrackedClip(points, valid, np.zeros(0, np.float32))
    return TrackedClip(points, valid, np.concatenate([colour, shape]).astype(np.float32))


def face_colours(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Colour of the face region only: Lab means of small patches and an a*b* histogram."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    eye = float(np.linalg.norm(points[33, :2] - points[263, :2]))
    radius = max(1, round(0.05 * eye))
    means = []
    for idx in COLOUR_POINTS:
        x, y = np.round(points[idx, :2]).astype(int)
        patch = lab[max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1]
        means.append(patch.reshape(-1, 3).mean(axis=0) if patch.size else np.zeros(3))
    face = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(face, [np.round(points[FACE_OVAL, :2]).astype(np.int32)], 1)  # type: ignore[call-overload]  # cv2/numpy stubs
    ab = lab[face > 0][:, 1:]
    hist, _, _ = np.histogram2d(ab[:, 0], ab[:, 1], bins=HIST_BINS, range=[[108, 168], [108, 188]])
    hist = hist.ravel() / max(len(ab), 1)
    return np.concatenate([np.ravel(means), 30.0 * hist]).astype(np.float32)


def lip_measures(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner-lip gap at the centre and corner-to-corner width (pixels, image plane): (T,) each."""
    p = np.asarray(points, np.float64)[..., :2]
    return np.linalg.norm(p[:, 14] - p[:, 13], axis=1), np.linalg.norm(p[:, 291] - p[:, 61], axis=1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the entries where both are finite."""
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def head_frame(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Points with the head pose removed: each frame aligned (similarity) on the stable points.

    Units are those of `reference_shape` (outer eye corners 0.09 apart). (T, 478, 3).
    """
    ref = reference_shape(points, valid).astype(np.float64)
    target = ref[STABLE_POINTS] - ref[STABLE_POINTS].mean(axis=0)
    out = np.full(points.shape, np.nan)
    for i in np.nonzero(valid)[0]:
        p = points[i].astype(np.float64)
        src = p[STABLE_POINTS]
        mu = src.mean(axis=0)
        src = src - mu
        u, s, vt = np.linalg.svd(src.T @ target)  # Umeyama: rotation and scale onto the target
        d = np.sign(np.linalg.det(u @ vt))
        fix = np.diag([1.0, 1.0, d])
        rot = u @ fix @ vt
        scale = float(np.sum(s * np.diag(fix))) / float(np.sum(src**2))
        out[i] = (p - mu) @ rot * scale
    return out


def mouth_features(points: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lip shape in the head frame (T, 2M) and mouth opening alone (T, 1), per-clip centred.

    Subtracting the clip's median removes the speaker's resting mouth, so a classifier learns
    how the lips move, not whose lips they are.
    """
    aligned = head_frame(points, valid)
    shape = aligned[:, MOUTH_POINTS, :2].reshape(len(points), -1)
    opening = np.linalg.norm(aligned[:, 14] - aligned[:, 13], axis=1)[:, None]
    ok = valid & np.all(np.isfinite(shape), axis=1)
    return _centred(shape, ok) / 0.09, _centred(opening, ok) / 0.09


def _centred(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """x minus its median over the rows marked ok."""
    return x - np.median(x[ok], axis=0)


@dataclass(frozen=True)
class LinearDiscriminant:
    """Linear discriminant analysis with equal priors and a shrunk pooled covariance."""

    classes: np.ndarray  # (C,)
    coef: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, shrink: float = 0.1) -> LinearDiscriminant:
        """Fit on features (N, F) and labels (N,)."""
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        resid = x - means[np.searchsorted(classes, y)]
        cov = resid.T @ resid / max(len(x) - len(classes), 1)
        cov = (1 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
        coef = np.linalg.solve(cov, means.T).T
        bias = -0.5 * np.sum(coef * means, axis=1)
        return cls(classes, coef, bias)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most likely class per row."""
        return self.classes[np.argmax(x @ self.coef.T + self.bias, axis=1)]


def balanced_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `truth`."""
    return float(np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)]))


def viseme_accuracy(
    train: list[tuple[np.ndarray, np.ndarray]], test: list[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Balanced accuracy on `test` of an LDA fitted on `train`; items are (features, labels)."""
    x = np.concatenate([f for f, _ in train])
    y = np.concatenate([lab for _, lab in train])
    model = LinearDiscriminant.fit(x, y)
    xt = np.concatenate([f for f, _ in test])
    yt = np.concatenate([lab for _, lab in test])
    return balanced_accuracy(yt, model.predict(xt))


def shape_frames(
    features: np.ndarray, valid: np.ndarray, dominant: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose dominant viseme is closed, rounded, spread or open (and tracked)."""
    keep = valid & np.isin(dominant, SHAPE_CLASSES) & np.all(np.isfinite(features), axis=1)
    return features[keep], dominant[keep]


def _group_weights(n_features: int) -> np.ndarray:
    """Per-feature weights giving patch colours, the histogram and proportions equal say."""
    n_means, n_hist = 3 * len(COLOUR_POINTS), HIST_BINS**2
    sizes = (n_means, n_hist, n_features - n_means - n_hist)
    return np.concatenate([np.full(k, 1.0 / np.sqrt(max(k, 1))) for k in sizes])


def identity_match_rate(faces: np.ndarray, identities: np.ndarray) -> float:
    """Leave-one-out nearest-neighbour identity matching of clip descriptors (z-scored).

    Clips whose identity has no other clip are not scored (they have nothing to match).
    """
    z = (faces - faces.mean(axis=0)) / np.maximum(faces.std(axis=0), 1e-6)
    z = z * _group_weights(faces.shape[1])
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    has_pair = np.array([np.sum(identities == i) > 1 for i in identities])
    hits = identities[np.argmin(d, axis=1)] == identities
    return float(hits[has_pair].mean())
