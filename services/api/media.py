"""Recognise media containers by their magic bytes (no decoding: that happens in the job)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Literal

from services.api.errors import ApiError

MediaKind = Literal["video", "audio", "image"]

# Enough for the MPEG-TS check, which needs the sync byte of the second 188-byte packet.
SNIFF_BYTES = 512
_TS_PACKET = 188
_MATROSKA = b"\x1a\x45\xdf\xa3"


def _is_iso_bmff(head: bytes) -> bool:
    return head[4:8] == b"ftyp"


def _is_riff(head: bytes, form: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == form


def _is_mpeg_ts(head: bytes) -> bool:
    return len(head) > _TS_PACKET and head[0] == 0x47 and head[_TS_PACKET] == 0x47


def _is_mpeg_audio(head: bytes) -> bool:
    return head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def looks_like(kind: MediaKind, head: bytes) -> bool:
    """Whether `head` (the first bytes of a file) starts a container of this kind."""
    if kind == "video":
        return (
            _is_iso_bmff(head)
            or head[:4] == _MATROSKA
            or _is_riff(head, b"AVI ")
            or _is_mpeg_ts(head)
            or head[:4] == b"\x00\x00\x01\xba"
        )
    if kind == "audio":
        return (
            _is_riff(head, b"WAVE")
            or _is_mpeg_audio(head)
            or head[:4] in (b"OggS", b"fLaC")
            or _is_iso_bmff(head)
            or head[:4] == _MATROSKA
        )
    return (
        head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or _is_riff(head, b"WEBP")
    )


def check_head(kind: MediaKind, head: bytes) -> None:
    """Raise 422 `empty_file` or 415 `unsupported_media_type` unless `head` starts `kind`."""
    if not head:
        raise ApiError(422, "empty_file", f"the {kind} file is empty")
    if not looks_like(kind, head):
        raise ApiError(
            415, "unsupported_media_type", f"the file is not a recognised {kind} container"
        )


class SniffedStream:
    """Wraps a chunk iterator: checks the magic bytes before the first byte passes, hashes all."""

    def __init__(self, chunks: Iterable[bytes], kind: MediaKind) -> None:
        self._chunks = iter(chunks)
        self.kind = kind
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        head = b""
        for chunk in self._chunks:
            head += chunk
            if len(head) >= SNIFF_BYTES:
                break
        # raising here, before anything was yielded, leaves no object behind
        check_head(self.kind, head)
        yield self._count(head)
        for chunk in self._chunks:
            yield self._count(chunk)

    def _count(self, chunk: bytes) -> bytes:
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk
