"""Stream a corpus: shards front to back from a directory or an opener, one sample at a time.

Memory is flat in corpus size: the reader holds the index, the open shard's stream buffer,
the clip being cut into training samples and a bounded shuffle buffer; nothing kept grows with
the number of clips or shards. A shard is read with one sequential stream (one GET from an
object store) and its checksum is checked when it ends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar, cast

import numpy as np

from talkinghead.corpus.format import ClipRecord
from talkinghead.corpus.index import INDEX_FILE, SPLITS, CorpusIndex, ShardEntry, load_index
from talkinghead.corpus.shards import (
    CorpusError,
    LazyClipRecord,
    decode_meta,
    decode_sample,
    iter_tar_samples,
)

Opener = Callable[[str], BinaryIO]
Sample = dict[str, Any]
T = TypeVar("T")

SHUFFLE_BUFFER = 256  # training samples; a GeneFace one is ~0.1 MB, an S3D one ~0.5 MB
KINDS = ("geneface", "s3d")
_DRAIN = 1 << 20


class _HashingReader:
    """A read-only stream that hashes and counts what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        """Wrap `raw`."""
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        """Read through, hashing."""
        data = self._raw.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        """Read to the end (the tar reader stops at the end-of-archive block, before padding)."""
        while self.read(_DRAIN):
            pass


def shuffled(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Items in a random order drawn from a buffer of at most `size` (1 or less: in order)."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[int(i)]


def _window(rows: np.ndarray, center: int, width: int) -> np.ndarray:
    """`width` rows around `center` (from center - width//2), edge rows repeated past the ends."""
    idx = np.clip(np.arange(center - width // 2, center - width // 2 + width), 0, len(rows) - 1)
    return np.asarray(rows[idx], np.float32)


def _mouth_points() -> np.ndarray:
    """Face-mesh indices of the outer and inner lip contours (40 points)."""
    from talkinghead.metrics import MOUTH_POINTS  # imported on demand: it pulls OpenCV

    return MOUTH_POINTS


class CorpusReader:
    """Read one split of a corpus from a directory or through `open_stream(relative_name)`."""

    def __init__(
        self,
        source: Path | str | Opener,
        split: str | None = "train",
        decode_crops: bool = False,
        verify: bool = True,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        """Read the index; decode_crops False decodes crops and masks only when used."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if callable(source):
            self._open: Opener = source
        else:
            root = Path(source)
            self._open = lambda name: open(root / name, "rb")  # noqa: SIM115 - closed by caller
        with self._open(INDEX_FILE) as f:
            self.index: CorpusIndex = load_index(f.read())
        self.split = split
        self.decode_crops = decode_crops
        self.verify = verify
        self.shuffle_buffer = shuffle_buffer
        self._wanted = {e.id for e in self.index.identities if split is None or e.split == split}

    def shards(self) -> list[ShardEntry]:
        """The shards this reader opens (those holding any clip of its split)."""
        return self.index.shards_for(self.split)

    def clips(self, seed: int | None = None) -> Iterator[ClipRecord]:
        """Every clip of the split once, in index order (shard order shuffled with a seed)."""
        shards = self.shards()
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(shards))
            shards = [shards[int(i)] for i in order]
        for shard in shards:
            yield from self._read_shard(shard)

    def _read_shard(self, shard: ShardEntry) -> Iterator[ClipRecord]:
        """The split's clips in one shard; checks count and checksum at its end."""
        stream = self._open(shard.name)
        try:
            hashing = _HashingReader(stream)
            count = 0
            for members in iter_tar_samples(cast(IO[bytes], hashing), shard.name):
                count += 1
                try:
                    meta = decode_meta(members)
                    if meta.identity not in self._wanted:
                        self.index.identity_index(meta.identity)  # unknown: a stale index
                        continue
                    record = decode_sample(members, decode_crops=self.decode_crops)
                except CorpusError as exc:
                    raise CorpusError(f"{shard.name}: {exc}") from exc
                yield record
            if self.verify:
                hashing.drain()
                if count != shard.samples:
                    raise CorpusError(
                        f"{shard.name} holds {count} samples; the index says {shard.samples}"
                    )
                if hashing.sha256.hexdigest() != shard.sha256 or hashing.bytes != shard.bytes:
                    raise CorpusError(f"{shard.name} does not match its checksum in the index")
        finally:
            stream.close()

    def _epochs(
        self,
        seed: int,
        epochs: int | None,
        cut: Callable[[ClipRecord, np.random.Generator], Iterator[Sample]],
    ) -> Iterator[Sample]:
        """Cut every clip into samples, epoch after epoch, each in a new shard order, shuffled."""
        rng = np.random.default_rng(seed)

        def stream() -> Iterator[Sample]:
            """Samples in shard order, epoch after epoch."""
            epoch = 0
            while epochs is None or epoch < epochs:
                shards = self.shards()
                produced = 0
                for i in rng.permutation(len(shards)):
                    shard = shards[int(i)]
                    for record in self._read_shard(shard):
                        try:
                            for sample in cut(record, rng):
                                produced += 1
                                yield sample
                        except CorpusError as exc:
                            raise CorpusError(f"{shard.name}: {exc}") from exc
                if produced == 0:
                    return  # an empty split would otherwise loop forever
                epoch += 1

        # One buffer across epochs: it fills once and stays full, so memory is the same for a
        # corpus smaller than the buffer and for a large one (and epoch seams are mixed too).
        return shuffled(stream(), self.shuffle_buffer, rng)

    def geneface_samples(
        self,
        window: int = 16,
        seed: int = 0,
        epochs: int | None = 1,
        points: str = "all",
    ) -> Iterator[Sample]:
        """Audio-to-motion windows of `window` frames (docs/corpus.md lists the keys)."""
        # Every non-overlapping window of each clip, from a random offset per clip and epoch so
        # that epochs see different cuts; clips shorter than a window give nothing.
        if points not in ("all", "mouth"):
            raise ValueError(f"points must be 'all' or 'mouth', got {points!r}")
        subset = _mouth_points() if points == "mouth" else None

        def cut(record: ClipRecord, rng: np.random.Generator) -> Iterator[Sample]:
            """The samples of one clip."""
            frames = record.meta.num_frames
            if frames < window:
                return
            feats, canon = record.arrays["audio_features"], record.arrays["canonical"]
            if subset is not None:
                canon = canon[:, subset]
            identity = self.index.identity_index(record.meta.identity)
            offset = int(rng.integers(min(window, frames - window + 1)))
            for start in range(offset, frames - window + 1, window):
                # copies: a view would pin the whole clip's arrays in the shuffle buffer
                yield {
                    "audio": np.array(feats[start : start + window], np.float32),
                    "landmarks": np.array(canon[start : start + window], np.float32),
                    "identity": identity,
                    "key": record.meta.key,
                    "start": start,
                }

        return self._epochs(seed, epochs, cut)

    def s3d_samples(
        self,
        seed: int = 0,
        epochs: int | None = 1,
        window: int = 16,
        frames_per_clip: int = 4,
    ) -> Iterator[Sample]:
        """One-shot renderer samples: target and reference frames of a clip, audio, poses."""
        # The reference comes from the same clip (so the same identity), at least a quarter of
        # the clip away from the target, so that it shows another expression and head pose.

        def cut(record: ClipRecord, rng: np.random.Generator) -> Iterator[Sample]:
            """The samples of one clip."""
            frames = record.meta.num_frames
            if frames < 2:
                return  # no other frame to take the reference from
            targets = rng.choice(frames, size=min(frames_per_clip, frames), replace=False)
            gap = max(1, frames // 4)
            pairs = []
            for t in (int(x) for x in targets):
                away = [r for r in range(frames) if abs(r - t) >= gap]
                pairs.append((t, int(rng.choice(away))))
            wanted = sorted({i for pair in pairs for i in pair})
            crops = dict(zip(wanted, _crop_frames(record, wanted), strict=True))
            masks, pose = record.masks, record.arrays["pose"]
            feats = record.arrays["audio_features"]
            identity = self.index.identity_index(record.meta.identity)
            for t, r in pairs:
                # copies, not views: a view would pin the clip's arrays in the shuffle buffer
                yield {
                    "target": np.array(crops[t]),
                    "target_mask": np.array(masks[t]),
                    "reference": np.array(crops[r]),
                    "reference_mask": np.array(masks[r]),
                    "audio": _window(feats, t, window),
                    "pose": np.array(pose[t], np.float32),
                    "reference_pose": np.array(pose[r], np.float32),
                    "identity": identity,
                    "key": record.meta.key,
                    "frame": t,
                    "reference_frame": r,
                }

        return self._epochs(seed, epochs, cut)

    def samples(self, kind: str, seed: int = 0, epochs: int | None = 1) -> Iterator[Sample]:
        """`geneface_samples` or `s3d_samples` by name, with their defaults."""
        if kind == "geneface":
            return self.geneface_samples(seed=seed, epochs=epochs)
        if kind == "s3d":
            return self.s3d_samples(seed=seed, epochs=epochs)
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _crop_frames(record: ClipRecord, indices: list[int]) -> np.ndarray:
    """The crops at `indices`, decoding no more of the clip's video than needed."""
    if isinstance(record, LazyClipRecord):
        return record.crop_frames(indices)
    return record.crops[indices]


def read_samples_per_second(
    source: Path | str | Opener,
    kind: str,
    samples: int,
    split: str | None = "train",
    seed: int = 0,
) -> dict[str, Any]:
    """Time reading `samples` samples of `kind` (epochs repeat as needed); returns the rate."""
    reader = CorpusReader(source, split=split)
    start = time.perf_counter()
    n = 0
    for _ in reader.samples(kind, seed=seed, epochs=None):
        n += 1
        if n >= samples:
            break
    seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "samples": n,
        "seconds": round(seconds, 4),
        "samples_per_s": round(n / seconds, 2) if seconds > 0 else 0.0,
    }
