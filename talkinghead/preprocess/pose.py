"""Per-frame head pose: solvePnP of face-mesh landmarks on a reference shape, One-Euro smoothing.

Conventions (OpenCV camera frame: x right, y down, z forward from the camera):
- `rotation` R and `translation` t map reference-shape (head) coordinates to camera
  coordinates: X_cam = R @ X_head + t. The reference shape is expressed in a head frame that
  coincides with the camera frame when the face looks straight into the camera (x towards the
  image's right, y down, z away from the camera), so R = I for a frontal head. Units: metres,
  the reference is scaled so the outer eye corners are `EYE_WIDTH_M` apart.
- R = Ry(-yaw) @ Rx(-pitch) @ Rz(roll), angles in degrees, with:
  yaw   > 0: the head turns so the nose moves to the image's right (about the vertical axis);
  pitch > 0: the head nods up, nose moves up in the image (about the horizontal axis);
  roll  > 0: in-plane tilt, clockwise as seen in the image (about the optical axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EYE_WIDTH_M = 0.09  # typical outer-canthus distance of an adult face

# Landmarks that move with the skull, not with expression: nose, eye corners, forehead,
# temples and cheekbones. Mouth, jaw, lids and brows are left out.
STABLE_POINTS = np.array(
    [
        # nose bridge, tip, wings, subnasale
        1, 2, 4, 5, 6, 168, 197, 195, 98, 327, 48, 278, 64, 294, 19, 94,
        # eye corners
        33, 133, 362, 263,
        # forehead
        10, 151, 9, 108, 337, 67, 297, 109, 338, 69, 299,
        # temples, cheekbones
        234, 454, 93, 323, 127, 356, 116, 345, 117, 346, 123, 352, 50, 280,
    ],
    dtype=np.int64,
)  # fmt: skip


@dataclass(frozen=True)
class Poses:
    """Per-frame head poses; NaN where the frame is invalid."""

    rotation: np.ndarray  # (T, 3, 3) head -> camera
    euler: np.ndarray  # (T, 3) yaw, pitch, roll in degrees (see module docstring)
    translation: np.ndarray  # (T, 3) metres, camera frame
    valid: np.ndarray  # (T,) bool


def intrinsics(width: int, height: int, fov_deg: float = 30.0) -> np.ndarray:
    """Pinhole camera matrix (3, 3) with `fov_deg` across the larger image side, centred."""
    focal = 0.5 * max(width, height) / np.tan(np.radians(fov_deg) / 2.0)
    return np.array(
        [[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(*np.shape(a), 3, 3)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, z, s, z, o, z, -s, z, c], axis=-1).reshape(*np.shape(a), 3, 3)


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(*np.shape(a), 3, 3)


def euler_to_rotation(euler: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll in degrees (..., 3) -> rotation matrices (..., 3, 3)."""
    e = np.radians(np.asarray(euler, dtype=np.float64))
    return _rot_y(-e[..., 0]) @ _rot_x(-e[..., 1]) @ _rot_z(e[..., 2])


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> yaw, pitch, roll in degrees (..., 3)."""
    r = np.asarray(rotation, dtype=np.float64)
    # R = Ry(a) Rx(b) Rz(c): row 1 = [cos b sin c, cos b cos c, -sin b]
    b = np.arcsin(np.clip(-r[..., 1, 2], -1.0, 1.0))
    c = np.arctan2(r[..., 1, 0], r[..., 1, 1])
    a = np.arctan2(r[..., 0, 2], r[..., 2, 2])
    return np.degrees(np.stack([-a, -b, c], axis=-1))


def _face_axes(points: np.ndarray) -> np.ndarray:
    """The face's own orientation from its 3D landmarks: (..., 3, 3), columns = x, y, z axes."""
    x = points[..., 263, :] - points[..., 33, :]  # subject's right eye -> left eye: image right
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = points[..., 2, :] - points[..., 10, :]  # forehead -> subnasale: down
    y = y - np.sum(y * x, axis=-1, keepdims=True) * x
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    z = np.cross(x, y)  # away from the camera for a frontal face
    return np.stack([x, y, z], axis=-1)


def frontal_angle(points: np.ndarray) -> np.ndarray:
    """Angle (radians) between each frame's face frame and the camera's: 0 = frontal.

    points: (..., 478, 3) pixel-unit points -> (...,).
    """
    axes = _face_axes(np.asarray(points, dtype=np.float64))  # (..., 3, 3)
    cos = np.clip((np.trace(axes, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.asarray(np.arccos(cos))


def reference_shape(
    points_seq: np.ndarray, valid: np.ndarray | None = None, frontal_fraction: float = 0.25
) -> np.ndarray:
    """Canonical 3D face shape (478, 3) in metres from the face mesh's own 3D output.

    points_seq: (T, 478, 3) pixel-unit points. The most frontal frames are each rotated into
    their own face frame, centred on the stable points, scaled, and the median taken.
    """
    pts = np.asarray(points_seq, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    ok = np.all(np.isfinite(pts), axis=(1, 2))
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    pts = pts[ok]
    if len(pts) == 0:
        raise ValueError("no valid frames to build a reference shape from")
    angle = frontal_angle(pts)  # (V,)
    keep = np.argsort(angle)[: max(1, int(np.ceil(frontal_fraction * len(pts))))]
    axes = _face_axes(pts[keep])  # (K, 3, 3)
    shapes = np.empty((len(keep), *pts.shape[1:]), dtype=np.float64)  # (K, 478, 3)
    for k, i in enumerate(keep):
        p = pts[i] - pts[i][STABLE_POINTS].mean(axis=0)
        p = p @ axes[k]  # into the face frame: row vectors times the axis columns
        p *= EYE_WIDTH_M / np.linalg.norm(p[263] - p[33])
        shapes[k] = p
    ref = np.median(shapes, axis=0)
    return ref.astype(np.float32)


class PoseSolver:
    """Frame-by-frame solvePnP (iterative, seeded by the previous frame) on the stable landmarks.

    Streaming form of `estimate_poses`: feed frames in order; memory does not grow with length.
    """

    def __init__(self, K: np.ndarray, reference: np.ndarray) -> None:
        """K: (3, 3) camera matrix; reference: (478, 3) from `reference_shape`."""
        self._obj = np.ascontiguousarray(reference[STABLE_POINTS], dtype=np.float64)  # (S, 3)
        self._cam = np.asarray(K, dtype=np.float64)
        self._dist = np.zeros(4)
        self._rvec: np.ndarray | None = None
        self._tvec: np.ndarray | None = None

    def solve(self, points: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """(rotation (3, 3), translation (3,)) for one frame's (478, 2|3) points, or None.

        None (or non-finite stable points) marks an invalid frame; the next one starts afresh.
        """
        if points is None or not np.all(np.isfinite(points[STABLE_POINTS, :2])):
            return None
        img = np.ascontiguousarray(points[STABLE_POINTS, :2], dtype=np.float64)  # (S, 2)
        obj, cam, dist = self._obj, self._cam, self._dist
        if self._rvec is None or self._tvec is None:
            success, rvec, tvec = cv2.solvePnP(obj, img, cam, dist, flags=cv2.SOLVEPNP_SQPNP)
            success, rvec, tvec = cv2.solvePnP(
                obj, img, cam, dist, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE
            )
        else:
            success, rvec, tvec = cv2.solvePnP(
                obj,
                img,
                cam,
                dist,
                self._rvec.copy(),
                self._tvec.copy(),
                True,
                cv2.SOLVEPNP_ITERATIVE,
            )
        if not success:
            self._rvec = self._tvec = None
            return None
        self._rvec, self._tvec = rvec, tvec
        return cv2.Rodrigues(rvec)[0], tvec.reshape(3)


def estimate_poses(
    points: np.ndarray, valid: np.ndarray, K: np.ndarray, reference: np.ndarray
) -> Poses:
    """Per-frame solvePnP (iterative, seeded by the previous frame) on the stable landmarks.

    points: (T, 478, 3) pixel-unit landmarks (only x, y used); valid: (T,); K: (3, 3);
    reference: (478, 3) from `reference_shape`.
    """
    n = len(points)
    rotation = np.full((n, 3, 3), np.nan)
    translation = np.full((n, 3), np.nan)
    ok = np.asarray(valid, dtype=bool).copy()
    solver = PoseSolver(K, reference)
    for t in range(n):
        pose = solver.solve(points[t] if ok[t] else None)
        if pose is None:
            ok[t] = False
            continue
        rotation[t], translation[t] = pose
    euler = np.full((n, 3), np.nan)
    euler[ok] = rotation_to_euler(rotation[ok])
    return Poses(rotation=rotation, euler=euler, translation=translation, valid=ok)


class OneEuroFilter:
    """Streaming One-Euro filter (Casiez et al. 2012) over vectors; NaN input resets it."""

    def __init__(
        self, fps: float, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0
    ) -> None:
        self.rate = float(fps)
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray:
        tau = 1.0 / (2.0 * np.pi * np.asarray(cutoff, dtype=np.float64))
        return 1.0 / (1.0 + tau * self.rate)

    def reset(self) -> None:
        """Forget the state (after a gap)."""
        self._x = self._dx = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Filter one sample (D,) -> (D,)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            self.reset()
            return x.copy()
        if self._x is None or self._dx is None:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) * self.rate
        a_d = self._alpha(self.d_cutoff)
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self._dx))
        self._x = a * x + (1.0 - a) * self._x
        return self._x.copy()


def _one_euro(x: np.ndarray, fps: float, min_cutoff: float, beta: float) -> np.ndarray:
    """Run a One-Euro filter along axis 0 of (T, D)."""
    f = OneEuroFilter(fps, min_cutoff=min_cutoff, beta=beta)
    return np.stack([f(row) for row in x]) if len(x) else x.copy()


def smooth_poses(
    euler: np.ndarray,
    trans: np.ndarray,
    fps: float,
    min_cutoff: float = 1.0,
    beta_deg: float = 0.03,
    beta_m: float = 3.0,
    zero_phase: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One-Euro smoothing of euler (T, 3) degrees and translation (T, 3) metres.

    With `zero_phase` (offline use) the filter runs forwards and backwards and the two passes
    are averaged, so real motion is not delayed; jitter is removed either way.
    """
    outs = []
    for x, beta in ((np.asarray(euler, np.float64), beta_deg), (np.asarray(trans), beta_m)):
        fwd = _one_euro(x, fps, min_cutoff, beta)
        if zero_phase:
            bwd = _one_euro(x[::-1], fps, min_cutoff, beta)[::-1]
            fwd = 0.5 * (fwd + bwd)
        outs.append(fwd)
    return outs[0], outs[1]


def poses_to_matrices(euler: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Euler degrees (T, 3) + translation (T, 3) -> 4x4 head-to-camera transforms (T, 4, 4)."""
    n = len(euler)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = euler_to_rotation(euler)
    out[:, :3, 3] = trans
    return out
