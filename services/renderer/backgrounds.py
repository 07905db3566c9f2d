"""The background a render is composited over: the avatar's plate, a colour, or an image."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from shared.jobs import JobError


def colour_plate(colour: str, size: int) -> np.ndarray:
    """A size x size RGB plate of a `#rrggbb` colour."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return np.broadcast_to(np.array(rgb, np.uint8), (size, size, 3)).copy()


def image_plate(data: bytes, size: int) -> np.ndarray:
    """An uploaded image scaled to cover a size x size square, centre-cropped (RGB)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise JobError("unreadable_background", "the background image cannot be decoded")
    h, w = bgr.shape[:2]
    scale = size / min(h, w)
    resized = cv2.resize(
        bgr,
        (max(size, round(w * scale)), max(size, round(h * scale))),
        interpolation=cv2.INTER_AREA,
    )
    y0, x0 = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return np.ascontiguousarray(resized[y0 : y0 + size, x0 : x0 + size, ::-1])


def background_plate(
    spec: dict[str, Any], size: int, source: np.ndarray, image: bytes | None = None
) -> np.ndarray:
    """The plate a render's `background` option asks for."""
    kind = spec.get("kind", "source")
    if kind == "colour":
        return colour_plate(str(spec["colour"]), size)
    if kind == "image":
        if image is None:
            raise JobError("unreadable_background", "the background image is missing")
        return image_plate(image, size)
    return source
