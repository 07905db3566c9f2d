"""Read a stored corpus in place: shards streamed from the object store, one GET each."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import BinaryIO

from shared.storage import ObjectStore


class ObjectStream(io.RawIOBase):
    """A read-only, forward-only file over an object's byte stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, out: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(out), len(self._buffer))
        out[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def store_opener(store: ObjectStore, prefix: str) -> Callable[[str], BinaryIO]:
    """An opener for the corpus reader: relative name → a buffered stream of that object."""

    def open_stream(name: str) -> BinaryIO:
        raw = ObjectStream(store.iter_range(f"{prefix.rstrip('/')}/{name}", chunk_size=1 << 20))
        return io.BufferedReader(raw, buffer_size=1 << 20)

    return open_stream
