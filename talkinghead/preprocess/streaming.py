"""Bounded-memory plumbing for the pipeline: read-ahead threads, an ordered worker, disk spools.

mediapipe, OpenCV and file I/O release the GIL, so on a 2-core machine a decode thread, the main
thread and one worker keep both cores busy; bounded queues keep memory independent of length.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Produce `items` in a background thread, at most `depth` ahead; errors re-raise here."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            outcome: Any = _DONE
        except BaseException as exc:  # handed to the consumer, which re-raises it
            outcome = exc
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's cleanup (open containers) runs in the thread that ran it
        while not stop.is_set():
            try:
                buffer.put(outcome, timeout=0.1)
                break
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10.0)  # a producer stuck in a read is a daemon: it cannot hang us


class OrderedWorker:
    """Runs `fn(*args)` in one background thread, in submission order, with a bounded backlog.

    `submit` blocks while `depth` calls are pending (so at most `depth` inputs are held) and
    re-raises the first error of a finished call; `close` waits for all of them.
    """

    def __init__(self, fn: Callable[..., object], depth: int = 8, name: str = "worker") -> None:
        """Start the thread."""
        self._fn = fn
        self._depth = max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[Future[object]] = deque()

    def submit(self, *args: Any) -> None:
        """Queue one call; waits for the oldest when the backlog is full."""
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._fn, *args))

    def close(self) -> None:
        """Wait for every queued call (re-raising the first error) and stop the thread."""
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> OrderedWorker:
        """Context manager entry."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Wait for the queued calls; on error drop those not started yet."""
        if exc_type is not None:
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.close()


class RowSpool:
    """Append-only (N, *row_shape) array kept in a file: rows go to the page cache, not to RAM.

    Plain reads and writes (no mmap) so that rows read back are not counted in this process's
    resident memory once dropped; reading any subset costs only that subset.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        """Create (truncate) the spool file at `path`."""
        self.path = Path(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._file = open(self.path, "w+b")  # noqa: SIM115 - closed by close()
        self._rows = 0
        self._dirty = False

    def __len__(self) -> int:
        """Rows written so far."""
        return self._rows

    def append(self, row: np.ndarray) -> int:
        """Write one row; returns its index."""
        arr = np.ascontiguousarray(row, dtype=self.dtype)
        if arr.shape != self.row_shape:
            raise ValueError(f"row must be {self.row_shape}, got {arr.shape}")
        self._file.seek(self._rows * self.row_bytes)
        self._file.write(arr.tobytes())
        self._dirty = True
        self._rows += 1
        return self._rows - 1

    def read(self, indices: np.ndarray | Iterable[int]) -> np.ndarray:
        """Rows at `indices` (K,) -> (K, *row_shape); consecutive indices are read in one call."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        idx = idx.astype(np.int64).reshape(-1)
        out = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= self._rows:
            raise IndexError(f"row index outside 0..{self._rows - 1}")
        if self._dirty:
            self._file.flush()
            self._dirty = False
        fd = self._file.fileno()
        flat = out.reshape(len(idx), -1).view(np.uint8)  # (K, row_bytes)
        k = 0
        while k < len(idx):
            run = 1
            while k + run < len(idx) and idx[k + run] == idx[k] + run:
                run += 1
            view = memoryview(flat[k : k + run].reshape(-1))  # type: ignore[arg-type]
            got = os.preadv(fd, [view], int(idx[k]) * self.row_bytes)
            if got != run * self.row_bytes:
                raise OSError(f"short read from {self.path}")
            k += run
        return out

    def close(self) -> None:
        """Close and delete the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise); no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
