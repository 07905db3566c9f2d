"""Magic-byte sniffing, byte ranges, cursors and the streaming multipart reader."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from services.api.errors import ApiError
from services.api.media import SniffedStream, looks_like
from services.api.multipart import FormSpec, StreamingForm
from services.api.pagination import decode_cursor, encode_cursor
from services.api.routes.renders import _Unsatisfiable, parse_range
from tests.unit.conftest import Media, multipart_body

TS = (b"\x47" + b"\0" * 187) * 2 + b"\x47"
VIDEO_HEADS = {
    "mp4": b"\0\0\0\x18ftypisom\0\0\0\0",
    "mov": b"\0\0\0\x14ftypqt  \0\0\0\0",
    "mkv": b"\x1a\x45\xdf\xa3\x01\0\0\0",
    "avi": b"RIFF\0\0\0\0AVI LIST",
    "ts": TS,
    "ps": b"\0\0\x01\xba\x44\0\x04",
}
AUDIO_HEADS = {
    "wav": b"RIFF\0\0\0\0WAVEfmt ",
    "mp3-id3": b"ID3\x04\0\0\0\0",
    "mp3-frame": b"\xff\xfb\x90\x64",
    "ogg": b"OggS\0\x02",
    "flac": b"fLaC\0\0\0\x22",
    "m4a": b"\0\0\0\x20ftypM4A ",
    "webm": b"\x1a\x45\xdf\xa3",
}
IMAGE_HEADS = {
    "png": b"\x89PNG\r\n\x1a\n\0\0",
    "jpeg": b"\xff\xd8\xff\xe0\0\x10JFIF",
    "webp": b"RIFF\0\0\0\0WEBPVP8 ",
}


@pytest.mark.parametrize("head", VIDEO_HEADS.values(), ids=VIDEO_HEADS)
def test_video_containers(head: bytes) -> None:
    assert looks_like("video", head)
    assert not looks_like("image", head)


@pytest.mark.parametrize("head", AUDIO_HEADS.values(), ids=AUDIO_HEADS)
def test_audio_containers(head: bytes) -> None:
    assert looks_like("audio", head)


@pytest.mark.parametrize("head", IMAGE_HEADS.values(), ids=IMAGE_HEADS)
def test_image_containers(head: bytes) -> None:
    assert looks_like("image", head)
    assert not looks_like("video", head)


@pytest.mark.parametrize(
    "head", [b"hello world", b"\x47" + b"\0" * 300, b"RIFF\0\0\0\0WAVE", b"%PDF-1.7", b"PK\x03\x04"]
)
def test_not_video(head: bytes) -> None:
    assert not looks_like("video", head)


def test_sniffed_stream_checks_before_passing_anything(media: Media) -> None:
    chunks = [media.video[i : i + 7] for i in range(0, len(media.video), 7)]
    stream = SniffedStream(chunks, "video")
    assert b"".join(stream) == media.video
    assert stream.size == len(media.video)
    passed: list[bytes] = []
    with pytest.raises(ApiError) as err:
        passed.extend(SniffedStream([b"plain ", b"text"], "video"))
    assert err.value.status == 415 and passed == []
    with pytest.raises(ApiError) as err:
        list(SniffedStream([], "audio"))
    assert err.value.code == "empty_file"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=95-", (95, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-1000", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("BYTES = 1 - 2", (1, 2)),
        ("bytes=5-1", None),
        ("bytes=1-2,4-5", None),
        ("bytes=-", None),
        ("lines=1-2", None),
        ("bytes=\u0661-2", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(_Unsatisfiable):
        parse_range(header, size)


def test_cursor_round_trip() -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert decode_cursor(encode_cursor(stamp, "av_1")) == (stamp, "av_1")
    for bad in ("", "!!", "bm9wZQ", encode_cursor(stamp, "x" * 50)):
        with pytest.raises(ApiError):
            decode_cursor(bad)


SPEC = FormSpec(file_fields=("f",), field_limits={"a": 10, "b": 10}, too_large_codes={"b": "big"})


def read_form(body: bytes, chunk: int = 5, spec: FormSpec = SPEC) -> tuple[dict[str, str], bytes]:
    got: list[bytes] = []
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    fields = StreamingForm(pieces, b"XyZ", spec).read(
        lambda name, seen: None, lambda name, chunks: got.extend(chunks)
    )
    return fields, b"".join(got)


def test_streaming_form_reads_fields_and_file_in_small_chunks() -> None:
    body = multipart_body([("a", b"1", None), ("f", b"x" * 1000, "f.bin"), ("b", b"two", None)])
    for chunk in (1, 3, 64, 10_000):
        assert read_form(body, chunk) == ({"a": "1", "b": "two"}, b"x" * 1000)


@pytest.mark.parametrize(
    ("parts", "code"),
    [
        ([("zzz", b"1", None)], "unknown_field"),
        ([("a", b"1", None), ("a", b"2", None)], "validation_error"),
        ([("a", b"x" * 11, None)], "validation_error"),
        ([("b", b"x" * 11, None)], "big"),
        ([("a", b"\xff\xfe", None)], "validation_error"),
        ([("f", b"1", "a"), ("f", b"2", "b")], "validation_error"),
    ],
)
def test_streaming_form_refusals(parts: list[tuple[str, bytes, str | None]], code: str) -> None:
    with pytest.raises(ApiError) as err:
        read_form(multipart_body(parts))
    assert err.value.code == code


def test_streaming_form_takes_one_of_alternative_file_parts() -> None:
    spec = FormSpec(("f", "g"), {"a": 10}, {}, second_file_code="two_files")
    names: list[str] = []
    got: list[bytes] = []

    def consume(name: str, chunks: Iterator[bytes]) -> None:
        names.append(name)
        got.extend(chunks)

    body = multipart_body([("a", b"1", None), ("g", b"y" * 100, "g.bin")])
    form = StreamingForm([body], b"XyZ", spec)
    fields = form.read(lambda name, seen: names.append(name), consume)
    assert fields == {"a": "1"} and names == ["g", "g"] and b"".join(got) == b"y" * 100
    with pytest.raises(ApiError) as err:
        read_form(multipart_body([("f", b"1", "a"), ("g", b"2", "b")]), spec=spec)
    assert err.value.code == "two_files"


@pytest.mark.parametrize("body", [b"", b"--XyZ\r\nbroken", b"no boundary here at all"])
def test_streaming_form_malformed(body: bytes) -> None:
    with pytest.raises(ApiError) as err:
        read_form(body)
    assert err.value.status == 422
