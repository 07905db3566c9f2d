"""Photo sources: refuse what cannot become an avatar, then normalise to an upright RGB PNG."""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from talkinghead.media import MediaError

# Accepted formats by their signature (the file's content, never its name): Pillow's name.
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
HEAD_BYTES = 16
# Other image formats, named so that the refusal says what the file is rather than calling a
# perfectly good image unreadable.
_OTHER_IMAGES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
)
_OK = "JPEG, PNG or WebP photo"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
# mediapipe's full-range detector finds faces up to about 5 m away but misses a face that
# fills the frame; the face mesh (short-range detector plus landmarks) covers close-ups.
_FULL_RANGE = 1


@dataclass(frozen=True)
class PhotoLimits:
    """What a source photo must satisfy."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # width x height as the header states it, checked pre-decode
    min_side: int = 256  # the shorter side in pixels
    max_side: int = 2048  # larger photos are scaled down to this longer side (not refused)
    min_face_score: float = 0.5  # detector confidence for a face to count
    # A second face counts as another subject when its box is at least this fraction of the
    # main face's area; smaller faces are passers-by in the background.
    rival_area_ratio: float = 0.25


@dataclass(frozen=True)
class PhotoFacts:
    """What checking and normalising a photo found."""

    format: str  # "jpeg", "png" or "webp"
    source_width: int  # as shown (EXIF orientation applied), before any scaling
    source_height: int
    width: int  # of the PNG written
    height: int
    orientation: int  # the EXIF orientation applied (1: none)
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the written PNG's pixels
    face_score: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["face_box"] = list(self.face_box)
        return out


@dataclass(frozen=True)
class DetectedFace:
    """One face a detector found."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _sniff(head: bytes) -> str:
    """Pillow's format name of an accepted photo; MediaError for anything else."""
    if head.startswith(_JPEG):
        return "JPEG"
    if head.startswith(_PNG):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _OTHER_IMAGES:
        if head.startswith(magic):
            raise MediaError("unsupported_format", f"{name} images are not accepted; send a {_OK}")
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        raise MediaError("unsupported_format", f"HEIF/AVIF images are not accepted; send a {_OK}")
    # Not handed to Pillow to guess: its other format parsers never see an upload.
    raise MediaError("unreadable_media", "the file is not a JPEG, PNG or WebP image")


def _open(path: Path, fmt: str, limits: PhotoLimits) -> Image.Image:
    """Open lazily (header only) and check the stated size before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the guard; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise MediaError("image_too_large", f"the image states too many pixels: {exc}") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise MediaError("unreadable_media", f"cannot read the {fmt} image: {exc}") from None
    w, h = img.size
    if w * h > limits.max_pixels:
        img.close()
        raise MediaError(
            "image_too_large",
            f"the image is {w}x{h} ({w * h / 1e6:.1f} MP); at most "
            f"{limits.max_pixels / 1e6:g} MP are accepted",
        )
    if min(w, h) < limits.min_side:
        img.close()
        raise MediaError(
            "image_too_small",
            f"the image is {w}x{h}; its shorter side must be at least {limits.min_side} px",
        )
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, struct.error, TypeError, KeyError):
        return 1  # a damaged EXIF block: show the pixels as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """The decoded image rotated/mirrored as its EXIF orientation says."""
    if orientation == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, struct.error, TypeError, KeyError):
        return img


def _to_srgb(img: Image.Image) -> Image.Image:
    """Convert pixels in an embedded colour profile to sRGB (left as they are if it fails)."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    try:
        from PIL import ImageCms  # a Pillow built without littlecms lacks it
    except ImportError:
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(
            img, src, ImageCms.createProfile("sRGB"), outputMode=out_mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img  # a broken or mismatched profile: the pixels are the best we have
    return converted if converted is not None else img


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparency over white, 16-bit grey scaled down rather than clipped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(img).astype(np.int64) >> 8  # 16-bit samples (PNG's only "I" kind)
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        # White, not black: a cut-out portrait on white looks like a photo; on black it does not.
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def _decode(img: Image.Image, fmt: str) -> tuple[Image.Image, int]:
    """Decode every pixel, upright and as RGB; returns it with the orientation applied."""
    try:
        img.load()
        orientation = _orientation(img)
        upright = _upright(img, orientation)
        rgb = _to_rgb(_to_srgb(upright))
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        # Truncated or corrupt data: Pillow says "image file is truncated", "broken data
        # stream" and the like.
        raise MediaError("unreadable_media", f"cannot decode the {fmt} image: {exc}") from None
    return rgb, orientation


def _scaled(img: Image.Image, max_side: int) -> Image.Image:
    """`img` with its longer side at most `max_side`."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _detector_faces(rgb: np.ndarray, min_score: float) -> list[DetectedFace]:
    """Faces found by mediapipe's full-range face detector."""
    import mediapipe as mp  # heavy import, only when a photo is checked

    h, w = rgb.shape[:2]
    with mp.solutions.face_detection.FaceDetection(
        model_selection=_FULL_RANGE, min_detection_confidence=min_score
    ) as detector:
        result = detector.process(rgb)
    faces = []
    for det in result.detections or []:
        box = det.location_data.relative_bounding_box
        x0, y0 = box.xmin * w, box.ymin * h
        corners = (x0, y0, x0 + box.width * w, y0 + box.height * h)
        faces.append(DetectedFace(corners, float(det.score[0])))
    return faces


def _mesh_faces(rgb: np.ndarray, min_score: float) -> list[DetectedFace]:
    """Faces found by the face mesh (close-ups the full-range detector misses)."""
    from talkinghead.preprocess.landmarks import FaceMeshDetector

    with FaceMeshDetector(
        max_faces=4, video_mode=False, min_detection_confidence=min_score
    ) as mesh:
        found = mesh.detect(rgb)
    # The mesh reports no confidence; its own presence check already passed.
    return [DetectedFace(face.bbox, 1.0) for face in found]


def find_faces(rgb: np.ndarray, min_score: float = 0.5) -> list[DetectedFace]:
    """Faces in an RGB uint8 image, largest first."""
    image = np.ascontiguousarray(rgb, dtype=np.uint8)
    faces = _detector_faces(image, min_score) or _mesh_faces(image, min_score)
    return sorted(faces, key=lambda f: f.area, reverse=True)


def _main_face(rgb: np.ndarray, limits: PhotoLimits) -> DetectedFace:
    """The one face of the photo; MediaError when there is none or more than one person."""
    faces = find_faces(rgb, limits.min_face_score)
    if not faces:
        raise MediaError("face_not_found", "no face was found in the photo")
    main = faces[0]
    rivals = [f for f in faces[1:] if f.area >= limits.rival_area_ratio * main.area]
    if rivals:
        raise MediaError(
            "multiple_subjects",
            f"the photo shows {len(rivals) + 1} faces; it must show one person",
        )
    return main


def _pixel_box(face: DetectedFace, width: int, height: int) -> tuple[int, int, int, int]:
    """The face box rounded to whole pixels inside the image."""
    x0, y0, x1, y1 = face.box
    return (
        int(np.clip(np.floor(x0), 0, width)),
        int(np.clip(np.floor(y0), 0, height)),
        int(np.clip(np.ceil(x1), 0, width)),
        int(np.clip(np.ceil(y1), 0, height)),
    )


def _check(src: Path, out_png: Path, limits: PhotoLimits) -> PhotoFacts:
    """Every check, then the PNG written to `out_png`."""
    try:
        size = src.stat().st_size
        with src.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise MediaError("unreadable_media", f"cannot read the file: {exc}") from None
    if size == 0:
        raise MediaError("unreadable_media", "the file is empty")
    if size > limits.max_bytes:
        raise MediaError(
            "image_too_large", f"the file is {size} bytes; at most {limits.max_bytes} are accepted"
        )
    fmt = _sniff(head)
    with _open(src, fmt, limits) as img:
        rgb, orientation = _decode(img, fmt)
    source_size = rgb.size
    rgb = _scaled(rgb, limits.max_side)
    pixels = np.asarray(rgb, dtype=np.uint8)
    face = _main_face(pixels, limits)
    rgb.save(out_png, format="PNG", compress_level=6)
    return PhotoFacts(
        format=fmt.lower(),
        source_width=source_size[0],
        source_height=source_size[1],
        width=rgb.size[0],
        height=rgb.size[1],
        orientation=orientation,
        face_box=_pixel_box(face, rgb.size[0], rgb.size[1]),
        face_score=round(face.score, 4),
    )


def normalise_photo(src: Path, out_png: Path, limits: PhotoLimits | None = None) -> PhotoFacts:
    """Check a JPEG/PNG/WebP portrait and write it upright as an RGB PNG; MediaError if unfit.

    Codes: `unreadable_media`, `unsupported_format`, `image_too_large`, `image_too_small`,
    `face_not_found`, `multiple_subjects`. `out_png` only ever holds a checked result.
    """
    limits = limits or PhotoLimits()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    part = out_png.with_name(f".{out_png.name}.part")
    try:
        facts = _check(src, part, limits)
        os.replace(part, out_png)
    except BaseException:
        part.unlink(missing_ok=True)
        if out_png.resolve() != src.resolve():  # a stale result must not pass for this one
            out_png.unlink(missing_ok=True)
        raise
    return facts
