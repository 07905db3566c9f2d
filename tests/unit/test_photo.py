"""Photo sources: accepted formats, EXIF orientation, size guards and the one-face rule."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from shared.config import Settings
from talkinghead.media import MediaError
from talkinghead.preprocess.photo import PhotoLimits, normalise_photo

ASTRONAUT_FACE = (173, 67, 279, 173)  # where the detector puts her face in the 512 px photo


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A real face: scikit-image's astronaut photo, 512x512 RGB."""
    return np.ascontiguousarray(data.astronaut())


def save(path: Path, rgb: np.ndarray, fmt: str, **options: object) -> Path:
    """Encode an array with Pillow in `fmt`."""
    Image.fromarray(rgb).save(path, format=fmt, **options)
    return path


def two_people(astronaut: np.ndarray) -> np.ndarray:
    """Two astronaut crops side by side: two clearly present faces."""
    crop = astronaut[0:300, 100:400]
    return np.ascontiguousarray(np.concatenate([crop, crop[:, ::-1]], axis=1))


def landscape() -> np.ndarray:
    """Sky over ground with no face: a 640x400 gradient scene."""
    y = np.linspace(0, 1, 400)[:, None, None]
    x = np.linspace(0, 1, 640)[None, :, None]
    sky = np.array([90, 150, 230]) * (1 - y) + np.array([230, 240, 250]) * y
    ground = np.array([60, 120, 40]) + 40 * x
    img = np.where(y > 0.6, ground, sky) * np.ones((400, 640, 1))
    return img.astype(np.uint8)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG stating `width` x `height` with a few bytes of pixel data: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def refusal(src: Path, out: Path, limits: PhotoLimits | None = None) -> str:
    """The code normalise_photo refuses `src` with; nothing may be left at `out`."""
    with pytest.raises(MediaError) as info:
        normalise_photo(src, out, limits)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".part")] == []
    return info.value.code


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 92}), ("PNG", {}), ("WEBP", {})])
def test_a_portrait_is_normalised_to_an_rgb_png(
    astronaut: np.ndarray, tmp_path: Path, fmt: str, options: dict[str, object]
) -> None:
    # the name says nothing: the content decides
    src = save(tmp_path / "upload.bin", astronaut, fmt, **options)
    facts = normalise_photo(src, tmp_path / "out" / "image.png")
    assert facts.format == fmt.lower() and facts.orientation == 1
    assert (facts.width, facts.height) == (facts.source_width, facts.source_height) == (512, 512)
    assert np.allclose(facts.face_box, ASTRONAUT_FACE, atol=12)
    with Image.open(tmp_path / "out" / "image.png") as out:
        assert out.format == "PNG" and out.mode == "RGB" and out.size == (512, 512)
        pixels = np.asarray(out).astype(int)
    assert np.abs(pixels - astronaut).mean() < 4  # lossy formats differ a little
    assert facts.to_dict()["face_box"] == list(facts.face_box)


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
        (3, Image.Transpose.ROTATE_180),
    ],
)
def test_exif_orientation_is_applied(
    astronaut: np.ndarray,
    tmp_path: Path,
    orientation: int,
    stored_as: Image.Transpose,
) -> None:
    upright = np.ascontiguousarray(astronaut[:, 56:456])  # 400 wide, 512 tall
    stored = Image.fromarray(upright).transpose(stored_as)
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = tmp_path / "phone.jpg"
    stored.save(src, format="JPEG", quality=95, exif=exif.tobytes())
    facts = normalise_photo(src, tmp_path / "image.png")
    assert facts.orientation == orientation
    assert (facts.width, facts.height) == (400, 512)
    with Image.open(tmp_path / "image.png") as out:
        assert not out.getexif()  # no orientation left for a viewer to apply twice
        pixels = np.asarray(out).astype(int)
    assert np.abs(pixels - upright).mean() < 4
    x0, _, x1, y1 = facts.face_box
    assert y1 < 256 and abs((x0 + x1) / 2 - (226 - 56)) < 20  # the face is at the top, upright


def test_transparency_goes_over_white_and_16_bit_grey_is_scaled(
    astronaut: np.ndarray, tmp_path: Path
) -> None:
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # a transparent strip on the left
    normalise_photo(save(tmp_path / "cut.png", rgba, "PNG"), tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as out:
        assert (np.asarray(out)[:, :40] == 255).all()
    grey = astronaut.mean(axis=2)
    wide = (grey * 257).astype(np.uint16)  # 16-bit samples
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    normalise_photo(tmp_path / "grey16.png", tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as out:
        assert out.mode == "RGB"
        assert np.abs(np.asarray(out)[..., 0].astype(float) - grey).mean() < 1.5


def test_large_photos_are_scaled_down_not_refused(astronaut: np.ndarray, tmp_path: Path) -> None:
    big = np.repeat(np.repeat(astronaut, 2, axis=0), 2, axis=1)  # 1024 px
    facts = normalise_photo(
        save(tmp_path / "big.png", big, "PNG"), tmp_path / "o.png", PhotoLimits(max_side=600)
    )
    assert (facts.source_width, facts.width, facts.height) == (1024, 600, 600)
    assert np.allclose(facts.face_box, np.array(ASTRONAUT_FACE) * 600 / 512, atol=12)


def test_a_close_up_filling_the_frame_is_a_face(astronaut: np.ndarray, tmp_path: Path) -> None:
    face = Image.fromarray(astronaut[67:173, 173:279]).resize((512, 512), Image.Resampling.BICUBIC)
    facts = normalise_photo(
        save(tmp_path / "close.png", np.asarray(face), "PNG"), tmp_path / "o.png"
    )
    x0, y0, x1, y1 = facts.face_box
    assert (x1 - x0) * (y1 - y0) > 0.3 * 512 * 512


def test_a_small_face_in_the_background_is_not_a_second_subject(
    astronaut: np.ndarray, tmp_path: Path
) -> None:
    crop = astronaut[0:300, 100:400]
    small = np.asarray(Image.fromarray(crop).resize((100, 100)))
    scene = np.concatenate([crop, np.pad(small, ((100, 100), (0, 0), (0, 0)))], axis=1)
    facts = normalise_photo(save(tmp_path / "scene.png", scene, "PNG"), tmp_path / "o.png")
    assert facts.face_box[2] < 300  # the large face, not the passer-by


def test_face_rules(astronaut: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "out" / "image.png"
    two = save(tmp_path / "two.jpg", two_people(astronaut), "JPEG")
    assert refusal(two, out) == "multiple_subjects"
    assert refusal(save(tmp_path / "land.png", landscape(), "PNG"), out) == "face_not_found"


def test_size_guards(astronaut: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "out" / "image.png"
    out.parent.mkdir()
    photo = save(tmp_path / "p.png", astronaut, "PNG")
    assert refusal(photo, out, PhotoLimits(max_bytes=photo.stat().st_size - 1)) == (
        "image_too_large"
    )
    big = np.zeros((1000, 1200, 3), np.uint8)
    assert refusal(save(tmp_path / "big.png", big, "PNG"), out, PhotoLimits(max_pixels=10**6)) == (
        "image_too_large"
    )
    small = np.asarray(Image.fromarray(astronaut).resize((200, 200)))
    assert refusal(save(tmp_path / "small.jpg", small, "JPEG"), out) == "image_too_small"


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    # Its pixel data is a few bytes: decoding would fail as unreadable, so `image_too_large`
    # shows the stated size was refused first (also above Pillow's own bomb threshold).
    bomb = png_header_only(tmp_path / "bomb.png", side, side)
    assert refusal(bomb, tmp_path / "image.png") == "image_too_large"


def test_unreadable_and_unsupported_files(astronaut: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "out" / "image.png"
    out.parent.mkdir()
    jpeg = save(tmp_path / "a.jpg", astronaut, "JPEG").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 3])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(4000))
    text = tmp_path / "notes.png"
    text.write_bytes(b"not an image at all\n" * 50)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, text, empty):
        assert refusal(bad, out) == "unreadable_media", bad.name
    gif = save(tmp_path / "looks-like.jpg", astronaut, "GIF")
    assert refusal(gif, out) == "unsupported_format"
    assert refusal(save(tmp_path / "b.bmp", astronaut, "BMP"), out) == "unsupported_format"
    assert refusal(save(tmp_path / "t.tif", astronaut, "TIFF"), out) == "unsupported_format"


def test_a_refusal_removes_an_earlier_result(astronaut: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "image.png"
    normalise_photo(save(tmp_path / "ok.png", astronaut, "PNG"), out)
    assert out.exists()
    assert refusal(save(tmp_path / "land.png", landscape(), "PNG"), out) == "face_not_found"


def test_settings_defaults_are_the_library_defaults() -> None:
    settings, limits = Settings(_env_file=None), PhotoLimits()
    assert settings.max_image_bytes == limits.max_bytes
    assert settings.max_image_pixels == limits.max_pixels
    assert settings.min_image_side == limits.min_side
