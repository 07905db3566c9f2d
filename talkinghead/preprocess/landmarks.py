"""Per-frame 478-point face landmarks (with iris) from mediapipe's face mesh."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import numpy as np

N_LANDMARKS = 478


class BoxGeometry:
    """Area and centre of a `bbox` (x0, y0, x1, y1 in pixels), shared by face records."""

    __slots__ = ()
    bbox: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        """Bounding-box area in square pixels."""
        x0, y0, x1, y1 = self.bbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        """Bounding-box centre in pixels."""
        x0, y0, x1, y1 = self.bbox
        return (0.5 * (x0 + x1), 0.5 * (y0 + y1))


@dataclass(frozen=True)
class FaceObservation(BoxGeometry):
    """One detected face: landmarks in pixel units and their bounding box."""

    points: np.ndarray  # (478, 3) float32: x, y in image pixels, z = mediapipe z * image width
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def observation_from_points(points: np.ndarray) -> FaceObservation:
    """Build an observation (bbox from x,y extent) from (478, 3) pixel-unit points."""
    pts = np.asarray(points, dtype=np.float32)
    x0, y0 = pts[:, :2].min(axis=0)
    x1, y1 = pts[:, :2].max(axis=0)
    return FaceObservation(points=pts, bbox=(float(x0), float(y0), float(x1), float(y1)))


class FaceMeshDetector:
    """Wraps `mp.solutions.face_mesh.FaceMesh(refine_landmarks=True)`; one instance per stream."""

    def __init__(
        self,
        max_faces: int = 3,
        video_mode: bool = True,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        import mediapipe as mp  # heavy import, only when a detector is made

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video_mode,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )

    def detect(self, rgb: np.ndarray) -> list[FaceObservation]:
        """Faces in one RGB uint8 frame (H, W, 3), largest first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb, dtype=np.uint8))
        faces: list[FaceObservation] = []
        for landmarks in result.multi_face_landmarks or []:
            norm = np.array(
                [(p.x, p.y, p.z) for p in landmarks.landmark], dtype=np.float32
            )  # (478, 3) normalised
            pts = norm * np.array([w, h, w], dtype=np.float32)
            faces.append(observation_from_points(pts))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def close(self) -> None:
        """Release the mediapipe graph."""
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
