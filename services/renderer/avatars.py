"""An LRU of loaded avatar renderers, read from the object store with checksums verified.

Shared by the in-process backend and the Triton python model, so both serve the same bytes
the same way. Thread-safe: Triton may run requests of several avatars at once.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.exports import MANIFEST, ExportNotFound, download_export, manifest_key
from shared.storage import ObjectNotFound, ObjectStore
from talkinghead.export.artifact import ExportedAvatar

Listener = Callable[[str, str], None]  # (event: "hit" | "load" | "evict", avatar_id)


@dataclass
class _Entry:
    avatar: ExportedAvatar
    manifest_sha256: str
    checked_at: float  # time.monotonic() of the last look at the stored manifest


def _manifest_digest(store: ObjectStore, avatar_id: str) -> str:
    try:
        return hashlib.sha256(store.get_bytes(manifest_key(avatar_id))).hexdigest()
    except ObjectNotFound:
        raise ExportNotFound(f"avatar {avatar_id} has no exported renderer") from None


class AvatarCache:
    """Up to `capacity` exported avatars in memory, least recently used evicted first.

    A cached avatar is trusted for `revalidate_s` seconds; after that, the next request
    compares the stored manifest with the loaded one (one small read) and reloads an avatar
    that was exported again, or forgets one that was deleted.
    """

    def __init__(
        self,
        store: ObjectStore,
        capacity: int = 4,
        device: torch.device | None = None,
        listener: Listener | None = None,
        revalidate_s: float = 30.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("the avatar cache needs room for at least one avatar")
        self.store = store
        self.capacity = capacity
        self.device = device
        self.listener = listener or (lambda event, avatar_id: None)
        self.revalidate_s = revalidate_s
        self._items: OrderedDict[str, _Entry] = OrderedDict()
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
            entry = self._items.get(avatar_id)
        if entry is not None and self._still_current(avatar_id, entry):
            with self._lock:
                if avatar_id in self._items:
                    self._items.move_to_end(avatar_id)
            self.listener("hit", avatar_id)
            return entry.avatar
        with self._lock:
            # One loader per avatar: concurrent requests for it wait rather than load twice.
            gate = self._loading.setdefault(avatar_id, threading.Lock())
        with gate:
            with self._lock:
                current = self._items.get(avatar_id)
            if current is None or current is entry:
                current = self._load(avatar_id)
                self._insert(avatar_id, current)
        with self._lock:
            self._loading.pop(avatar_id, None)
        return current.avatar

    def _still_current(self, avatar_id: str, entry: _Entry) -> bool:
        """Whether the cached export is the stored one (looked up at most every revalidate_s)."""
        now = time.monotonic()
        if now - entry.checked_at < self.revalidate_s:
            return True
        try:
            digest = _manifest_digest(self.store, avatar_id)
        except ExportNotFound:
            self.drop(avatar_id)
            raise
        if digest != entry.manifest_sha256:
            return False
        entry.checked_at = now
        return True

    def _load(self, avatar_id: str) -> _Entry:
        scratch = Path(tempfile.mkdtemp(prefix=f"th-avatar-{avatar_id}-"))
        try:
            download_export(self.store, avatar_id, scratch)
            avatar = ExportedAvatar.load(scratch, self.device)
            digest = hashlib.sha256((scratch / MANIFEST).read_bytes()).hexdigest()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # everything is in memory now
        self.listener("load", avatar_id)
        return _Entry(avatar, digest, time.monotonic())

    def _insert(self, avatar_id: str, entry: _Entry) -> None:
        evicted = []
        with self._lock:
            self._items[avatar_id] = entry
            self._items.move_to_end(avatar_id)
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False)[0])
        for old in evicted:
            self.listener("evict", old)

    def drop(self, avatar_id: str) -> None:
        """Forget an avatar (e.g. deleted); the next request loads it again."""
        with self._lock:
            self._items.pop(avatar_id, None)
