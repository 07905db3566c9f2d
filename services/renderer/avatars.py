"""An LRU of loaded avatar renderers, read from the object store with checksums verified.

Shared by the in-process backend and the Triton python model, so both serve the same bytes
the same way. Thread-safe: Triton may run requests of several avatars at once.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from shared.exports import download_export
from shared.storage import ObjectStore
from talkinghead.export.artifact import ExportedAvatar

Listener = Callable[[str, str], None]  # (event: "hit" | "load" | "evict", avatar_id)


class AvatarCache:
    """Up to `capacity` exported avatars in memory, least recently used evicted first."""

    def __init__(
        self,
        store: ObjectStore,
        capacity: int = 4,
        device: torch.device | None = None,
        listener: Listener | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the avatar cache needs room for at least one avatar")
        self.store = store
        self.capacity = capacity
        self.device = device
        self.listener = listener or (lambda event, avatar_id: None)
        self._items: OrderedDict[str, ExportedAvatar] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def __contains__(self, avatar_id: str) -> bool:
        with self._lock:
            return avatar_id in self._items

    def ids(self) -> list[str]:
        """Cached avatar ids, least recently used first."""
        with self._lock:
            return list(self._items)

    def get(self, avatar_id: str) -> ExportedAvatar:
        """The loaded avatar; downloads, verifies and loads it on a miss."""
        with self._lock:
            found = self._items.get(avatar_id)
            if found is not None:
                self._items.move_to_end(avatar_id)
                self.listener("hit", avatar_id)
                return found
            # One loader per avatar: concurrent requests for it wait rather than load twice.
            gate = self._loading.setdefault(avatar_id, threading.Lock())
        with gate:
            with self._lock:
                found = self._items.get(avatar_id)
            if found is None:
                found = self._load(avatar_id)
                self._insert(avatar_id, found)
        with self._lock:
            self._loading.pop(avatar_id, None)
        return found

    def _load(self, avatar_id: str) -> ExportedAvatar:
        scratch = Path(tempfile.mkdtemp(prefix=f"th-avatar-{avatar_id}-"))
        try:
            download_export(self.store, avatar_id, scratch)
            avatar = ExportedAvatar.load(scratch, self.device)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # everything is in memory now
        self.listener("load", avatar_id)
        return avatar

    def _insert(self, avatar_id: str, avatar: ExportedAvatar) -> None:
        evicted = []
        with self._lock:
            self._items[avatar_id] = avatar
            self._items.move_to_end(avatar_id)
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False)[0])
        for old in evicted:
            self.listener("evict", old)

    def drop(self, avatar_id: str) -> None:
        """Forget an avatar (e.g. deleted); the next request loads it again."""
        with self._lock:
            self._items.pop(avatar_id, None)
