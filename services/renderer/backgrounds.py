"""The background a render is composited over: the avatar's plate, a colour, or an image."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from shared.jobs import JobError

Shape = int | tuple[int, int]  # a square side, or (height, width)


def _hw(shape: Shape) -> tuple[int, int]:
    return (shape, shape) if isinstance(shape, int) else shape


def colour_plate(colour: str, shape: Shape) -> np.ndarray:
    """An RGB plate of a `#rrggbb` colour."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return np.broadcast_to(np.array(rgb, np.uint8), (*_hw(shape), 3)).copy()


def image_plate(data: bytes, shape: Shape) -> np.ndarray:
    """An uploaded image scaled to cover the frame, centre-cropped (RGB)."""
    height, width = _hw(shape)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise JobError("unreadable_background", "the background image cannot be decoded")
    h, w = bgr.shape[:2]
    scale = max(height / h, width / w)
    resized = cv2.resize(
        bgr,
        (max(width, round(w * scale)), max(height, round(h * scale))),
        interpolation=cv2.INTER_AREA,
    )
    y0, x0 = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width, ::-1])


def background_plate(
    spec: dict[str, Any], shape: Shape, source: np.ndarray, image: bytes | None = None
) -> np.ndarray:
    """The plate a render's `background` option asks for."""
    kind = spec.get("kind", "source")
    if kind == "colour":
        return colour_plate(str(spec["colour"]), shape)
    if kind == "image":
        if image is None:
            raise JobError("unreadable_background", "the background image is missing")
        return image_plate(image, shape)
    return source
