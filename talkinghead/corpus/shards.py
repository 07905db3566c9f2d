"""Corpus samples as tar members: encode/decode one clip, write clip tars and rolling shards.

A sample is the list of `(member name, bytes)` of one ClipRecord (see `format.MEMBERS`). Every
byte written here is a function of the input alone (fixed zip and tar timestamps, owners and
member order, a bit-exact H.264 encode), so the same clips always give the same shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

import numpy as np

from talkinghead.corpus.format import (
    CROP_SIZE,
    FPS,
    MEMBERS,
    SAMPLE_RATE,
    ClipMeta,
    ClipRecord,
)
from talkinghead.media import run_ffmpeg

Members = list[tuple[str, bytes]]

SHARD_MAX_BYTES = 256 * 1024 * 1024
SHARD_PATTERN = "shard-{index:06d}.tar"
SHARDS_DIR = "shards"
# Crops are training targets, not something a browser plays: full-resolution chroma (4:4:4)
# keeps the lip/skin and teeth edges that 4:2:0 halves. Measured on a moving 256x256 face at
# CRF 16: 39 KB and a mean error of 1.5 levels for 4:4:4, 45 KB and 2.1 levels for 4:2:0.
CROP_CRF = 16
CROP_PIX_FMT = "yuv444p"
# Tar headers carry no time, owner or permissions that depend on the machine that wrote them.
_TAR_FORMAT = tarfile.USTAR_FORMAT
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


class CorpusError(ValueError):
    """A corpus, shard or sample that cannot be read or written as format v1."""


# --- members ---------------------------------------------------------------------------------


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """`np.savez_compressed` with fixed entry times (numpy stamps the wall clock)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an npz member (pickles refused)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def encode_wav(audio: np.ndarray) -> bytes:
    """16-bit PCM mono WAV at SAMPLE_RATE."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def decode_wav(data: bytes) -> np.ndarray:
    """The int16 samples of a mono SAMPLE_RATE WAV member."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE or samples.shape[1] != 1:
        raise CorpusError(f"audio is {rate} Hz with {samples.shape[1]} channels, not 16 kHz mono")
    return np.ascontiguousarray(samples[:, 0])


def encode_crops(crops: np.ndarray, fps: int = FPS) -> bytes:
    """(T, S, S, 3) uint8 RGB as H.264 mp4 (CROP_PIX_FMT, CROP_CRF, BT.601 like media.py)."""
    _, h, w, _ = crops.shape
    with tempfile.TemporaryDirectory(prefix="th-crops-") as tmp:
        raw, out = Path(tmp) / "crops.rgb", Path(tmp) / "crops.mp4"
        with open(raw, "wb") as f:
            # in slices: the builder may hand over a memory map of a long clip
            for i in range(0, len(crops), 64):
                f.write(np.ascontiguousarray(crops[i : i + 64], dtype=np.uint8).tobytes())
        run_ffmpeg([
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", str(fps),
            "-i", str(raw), "-an", "-vf", f"format={CROP_PIX_FMT}", "-colorspace", "smpte170m",
            "-c:v", "libx264", "-preset", "medium", "-crf", str(CROP_CRF), "-r", str(fps),
            # bitexact: no muxer/encoder version tags, so the bytes depend on the pixels alone
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-movflags", "+faststart", "-f", "mp4", str(out),
        ])  # fmt: skip
        return out.read_bytes()


def _decoded(data: bytes, last: int | None = None) -> Iterator[tuple[int, Any]]:
    """(index, PyAV frame) of an H.264 crops member, stopping after frame `last`."""
    import av

    # media.iter_frames opens a path; a member is already in memory, and a temp file per
    # sample would put a disk write on the reader's hot path.
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                yield i, frame
                if last is not None and i >= last:
                    return
    except (av.FFmpegError, IndexError) as exc:
        raise CorpusError(f"crops video cannot be decoded: {exc}") from exc


def iter_crop_frames(data: bytes) -> Iterator[np.ndarray]:
    """Decode an H.264 crops member frame by frame as (S, S, 3) uint8 RGB."""
    for _, frame in _decoded(data):
        yield frame.to_ndarray(format="rgb24")


def decode_crop_frames(data: bytes, indices: Sequence[int]) -> np.ndarray:
    """Only the frames at `indices` (in that order), decoding no further than the last one."""
    wanted = set(indices)
    if not wanted:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    # frames before the last wanted one must be decoded (inter prediction), but only the
    # wanted ones are converted to RGB: the conversion costs as much as the decode
    got = {i: f.to_ndarray(format="rgb24") for i, f in _decoded(data, max(wanted)) if i in wanted}
    if len(got) != len(wanted):
        raise CorpusError(f"crops video has no frame {max(wanted)}")
    return np.stack([got[i] for i in indices])


def split_member(name: str) -> tuple[str, str]:
    """`KEY.suffix` → (KEY, suffix); keys hold no dot, suffixes may (`crops.mp4`)."""
    key, dot, suffix = name.partition(".")
    if not dot or not key or suffix not in MEMBERS:
        raise CorpusError(f"member {name!r} is not KEY.<one of {', '.join(MEMBERS)}>")
    return key, suffix


def sample_key(members: Sequence[tuple[str, bytes]]) -> str:
    """The key of a complete sample (raises if members are missing, extra or mixed)."""
    keys, suffixes = set(), []
    for name, _ in members:
        key, suffix = split_member(name)
        keys.add(key)
        suffixes.append(suffix)
    if len(keys) != 1:
        raise CorpusError(f"a sample's members have several keys: {sorted(keys)}")
    key = keys.pop()
    if sorted(suffixes) != sorted(MEMBERS):
        raise CorpusError(f"sample {key} has members {sorted(suffixes)}, not {sorted(MEMBERS)}")
    return key


def _ordered(members: Sequence[tuple[str, bytes]]) -> Members:
    """Members in format.MEMBERS order (the order every writer stores them in)."""
    return sorted(members, key=lambda m: MEMBERS.index(split_member(m[0])[1]))


def encode_sample(record: ClipRecord) -> Members:
    """The tar members of one clip, checked first and in MEMBERS order."""
    record.check()
    key = record.meta.key
    if not key or "." in key or "/" in key:
        raise CorpusError(f"clip key {key!r} must be non-empty without '.' or '/'")
    meta = json.dumps(record.meta.to_json(), sort_keys=True, separators=(",", ":"))
    arrays = {k: np.asarray(v) for k, v in record.arrays.items()}
    return [
        (f"{key}.json", meta.encode()),
        (f"{key}.npz", encode_npz(arrays)),
        (f"{key}.wav", encode_wav(record.audio)),
        (f"{key}.crops.mp4", encode_crops(record.crops, record.meta.fps)),
        (f"{key}.masks.npz", encode_npz({"masks": np.asarray(record.masks, np.uint8)})),
    ]


def decode_meta(members: Sequence[tuple[str, bytes]]) -> ClipMeta:
    """Only the `KEY.json` of a sample (what filtering and tallies need)."""
    for name, data in members:
        if name.endswith(".json"):
            try:
                return ClipMeta.from_json(json.loads(data))
            except (ValueError, TypeError) as exc:
                raise CorpusError(f"member {name} is corrupt: {exc}") from exc
    raise CorpusError("the sample has no KEY.json")


class LazyClipRecord(ClipRecord):
    """A ClipRecord whose crops and masks are decoded from their members on first use."""

    def __init__(
        self,
        meta: ClipMeta,
        arrays: dict[str, np.ndarray],
        audio: np.ndarray,
        crops_mp4: bytes,
        masks_npz: bytes,
    ) -> None:
        """Keep the encoded media; nothing is decoded yet."""
        self.meta, self.arrays, self.audio = meta, arrays, audio
        self.crops_mp4, self.masks_npz = crops_mp4, masks_npz
        self._crops: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    @property
    def crops(self) -> np.ndarray:
        """All crops, (T, S, S, 3) uint8, decoded once."""
        if self._crops is None:
            self._crops = _decode_all_crops(self.meta, self.crops_mp4)
        return self._crops

    @crops.setter
    def crops(self, value: np.ndarray) -> None:
        """Set decoded crops."""
        self._crops = value

    @property
    def masks(self) -> np.ndarray:
        """All masks, (T, S, S) uint8, decoded once."""
        if self._masks is None:
            self._masks = _decode_masks(self.meta, self.masks_npz)
        return self._masks

    @masks.setter
    def masks(self, value: np.ndarray) -> None:
        """Set decoded masks."""
        self._masks = value

    def check_arrays(self) -> None:
        """ClipRecord.check without decoding: crops and masks stand in as zero-cost views."""
        t, size = self.meta.num_frames, self.meta.crop_size
        stand_in = np.zeros((), np.uint8)
        ClipRecord(
            self.meta,
            self.arrays,
            self.audio,
            np.broadcast_to(stand_in, (t, size, size, 3)),
            np.broadcast_to(stand_in, (t, size, size)),
        ).check()

    def crop_frames(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), S, S, 3) crops, decoding only as far as the last index."""
        if self._crops is not None:
            return self._crops[list(indices)]
        if any(not 0 <= i < self.meta.num_frames for i in indices):
            raise IndexError(f"clip {self.meta.key} has {self.meta.num_frames} frames")
        try:
            return decode_crop_frames(self.crops_mp4, indices)
        except CorpusError as exc:
            raise CorpusError(f"member {self.meta.key}.crops.mp4 is corrupt: {exc}") from exc


def _decode_all_crops(meta: ClipMeta, data: bytes) -> np.ndarray:
    """Every crop of a clip, checked against its meta."""
    try:
        frames = list(iter_crop_frames(data))
    except CorpusError as exc:
        raise CorpusError(f"member {meta.key}.crops.mp4 is corrupt: {exc}") from exc
    crops = np.stack(frames) if frames else np.zeros((0, meta.crop_size, meta.crop_size, 3))
    if crops.shape != (meta.num_frames, meta.crop_size, meta.crop_size, 3):
        raise CorpusError(f"member {meta.key}.crops.mp4 holds {crops.shape}, not the meta's")
    return crops.astype(np.uint8, copy=False)


def _decode_masks(meta: ClipMeta, data: bytes) -> np.ndarray:
    """The masks of a clip, checked against its meta."""
    try:
        masks = decode_npz(data)["masks"]
    except Exception as exc:  # zip, zlib and npy errors alike mean a damaged member
        raise CorpusError(f"member {meta.key}.masks.npz is corrupt: {exc}") from exc
    if masks.shape != (meta.num_frames, meta.crop_size, meta.crop_size) or masks.dtype != np.uint8:
        raise CorpusError(f"member {meta.key}.masks.npz holds {masks.dtype} {masks.shape}")
    return masks


def decode_sample(members: Sequence[tuple[str, bytes]], decode_crops: bool = True) -> ClipRecord:
    """A ClipRecord from its members; with decode_crops False, crops and masks decode lazily."""
    key = sample_key(members)
    data = {split_member(name)[1]: blob for name, blob in members}
    meta = decode_meta(members)
    if meta.key != key:
        raise CorpusError(f"sample {key}: KEY.json names the clip {meta.key!r}")
    try:
        arrays = decode_npz(data["npz"])
    except Exception as exc:
        raise CorpusError(f"member {key}.npz is corrupt: {exc}") from exc
    try:
        audio = decode_wav(data["wav"])
    except Exception as exc:
        raise CorpusError(f"member {key}.wav is corrupt: {exc}") from exc
    lazy = LazyClipRecord(meta, arrays, audio, data["crops.mp4"], data["masks.npz"])
    try:
        lazy.check_arrays()
    except ValueError as exc:
        raise CorpusError(f"sample {key} disagrees with its meta: {exc}") from exc
    if decode_crops:
        return ClipRecord(meta, arrays, audio, lazy.crops, lazy.masks)
    return lazy


# --- tar streams -----------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        """Wrap `out`."""
        self._out = out
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        """Write through, hashing."""
        self.sha256.update(data)
        self.bytes += len(data)
        return self._out.write(data)

    def tell(self) -> int:
        """Bytes written (tarfile asks for the start offset)."""
        return self.bytes


def _tar_header(name: str, size: int) -> tarfile.TarInfo:
    """A member header that depends on the name and size alone."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sample_tar_bytes(members: Sequence[tuple[str, bytes]]) -> int:
    """What a sample adds to a tar: a header block per member plus its padded data."""
    return sum(_BLOCK + -(-len(data) // _BLOCK) * _BLOCK for _, data in members)


def _tar_size(content: int) -> int:
    """The file size of a tar whose members take `content` bytes (end blocks, record padding)."""
    return -(-(content + 2 * _BLOCK) // _RECORD) * _RECORD


class _TarSink:
    """One tar being written to `path` (via a .part file renamed on close)."""

    def __init__(self, path: Path) -> None:
        """Open the .part file and a tar writer on it."""
        self.path = path
        self.part = path.with_name(f".{path.name}.part")
        self._file = open(self.part, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._hashing = _HashingWriter(self._file)
        # tarfile only writes and asks tell(): the hash comes free, no second read of the shard
        self._tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=cast(IO[bytes], self._hashing), mode="w", format=_TAR_FORMAT
        )
        self.samples = 0
        self.content = 0

    def add(self, members: Sequence[tuple[str, bytes]]) -> None:
        """Append one sample's members, adjacent and in MEMBERS order."""
        for name, data in _ordered(members):
            self._tar.addfile(_tar_header(name, len(data)), io.BytesIO(data))
        self.samples += 1
        self.content += sample_tar_bytes(members)

    def close(self) -> tuple[int, str]:
        """Finish the tar; returns (bytes, sha256)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.part, self.path)
        return self._hashing.bytes, self._hashing.sha256.hexdigest()

    def abort(self) -> None:
        """Drop the partial tar."""
        self._file.close()
        self.part.unlink(missing_ok=True)


def iter_tar_samples(stream: IO[bytes], name: str = "tar") -> Iterator[Members]:
    """The samples of a tar read front to back (`r|`: no seeking), one at a time."""
    current: Members = []
    key = ""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            while (info := tar.next()) is not None:
                # tarfile keeps every header it read (members is not in its stubs); we need none
                cast(Any, tar).members.clear()
                if not info.isfile():
                    raise CorpusError(f"{name}: member {info.name!r} is not a regular file")
                member_key, _ = split_member(info.name)
                if current and member_key != key:
                    sample_key(current)
                    yield current
                    current = []
                key = member_key
                handle = tar.extractfile(info)
                assert handle is not None  # a regular file always has data
                current.append((info.name, handle.read()))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorpusError(f"{name} is not a readable tar: {exc}") from exc
    except CorpusError as exc:
        raise CorpusError(f"{name}: {exc}") from exc
    if current:
        try:
            sample_key(current)
        except CorpusError as exc:
            raise CorpusError(f"{name}: {exc}") from exc
        yield current


def write_clip_tar(records: Iterable[ClipRecord], path: Path) -> int:
    """Write the clips of one source as one tar (samples sorted by key); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = _TarSink(path)
    try:
        for record in sorted(records, key=lambda r: r.meta.key):
            sink.add(encode_sample(record))
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return sink.samples


# --- shards ----------------------------------------------------------------------------------


@dataclass
class IdentityTally:
    """What one identity contributes: clip count, seconds, and clips per value of each tag."""

    clips: int = 0
    seconds: float = 0.0
    languages: dict[str, int] = field(default_factory=dict)
    speakers: dict[str, int] = field(default_factory=dict)
    licences: dict[str, int] = field(default_factory=dict)

    def add(self, meta: ClipMeta) -> None:
        """Count one clip."""
        self.clips += 1
        self.seconds += meta.duration_s
        for counts, value in (
            (self.languages, meta.language),
            (self.speakers, meta.speaker),
            (self.licences, meta.licence),
        ):
            counts[value] = counts.get(value, 0) + 1

    def merge(self, other: IdentityTally) -> None:
        """Add another tally of the same identity."""
        self.clips += other.clips
        self.seconds += other.seconds
        for mine, theirs in (
            (self.languages, other.languages),
            (self.speakers, other.speakers),
            (self.licences, other.licences),
        ):
            for value, n in theirs.items():
                mine[value] = mine.get(value, 0) + n


@dataclass
class ShardInfo:
    """A finished shard: its name relative to the corpus root, size, checksum and contents."""

    name: str  # "shards/shard-000000.tar"
    samples: int
    bytes: int
    sha256: str
    identities: dict[str, IdentityTally]
    audio_encoder: str
    feature_dim: int

    def to_json(self) -> dict[str, Any]:
        """The index entry (identities by id only; their tallies go to the identity list)."""
        return {
            "name": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "identities": sorted(self.identities),
        }


class ShardWriter:
    """Append samples to `out_dir/shard-NNNNNN.tar`, starting a new shard before max_bytes."""

    def __init__(
        self,
        out_dir: Path,
        max_bytes: int = SHARD_MAX_BYTES,
        on_shard: Callable[[Path], None] | None = None,
    ) -> None:
        """`on_shard(path)` runs once per finished shard (e.g. upload it, then delete it)."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.on_shard = on_shard
        self.shards: list[ShardInfo] = []
        self._sink: _TarSink | None = None
        self._tallies: dict[str, IdentityTally] = {}
        self._features: tuple[str, int] | None = None
        self._closed = False

    def add(self, sample: ClipRecord | Sequence[tuple[str, bytes]]) -> None:
        """Add one clip, as a record (encoded here) or as its members (stored as they are)."""
        if self._closed:
            raise RuntimeError("this ShardWriter is closed")
        members = encode_sample(sample) if isinstance(sample, ClipRecord) else list(sample)
        sample_key(members)
        meta = decode_meta(members)
        features = (meta.audio_encoder, meta.feature_dim)
        if self._features is None:
            self._features = features
        elif features != self._features:
            # a model trains on one feature kind; a mixed corpus is a builder mistake
            raise CorpusError(
                f"clip {meta.key} has audio features {features}, the corpus {self._features}"
            )
        size = sample_tar_bytes(members)
        if (
            self._sink is not None
            and self._sink.samples
            and (_tar_size(self._sink.content + size) > self.max_bytes)
        ):
            self._finish_shard()
        if self._sink is None:
            name = SHARD_PATTERN.format(index=len(self.shards))
            self._sink = _TarSink(self.out_dir / name)
        self._sink.add(members)
        self._tallies.setdefault(meta.identity, IdentityTally()).add(meta)

    def add_tar(self, source: Path | IO[bytes]) -> int:
        """Copy every sample of a clip tar without re-encoding; returns the count."""
        if isinstance(source, Path):
            with open(source, "rb") as stream:
                return self._add_stream(stream, source.name)
        return self._add_stream(source, "clip tar")

    def _add_stream(self, stream: IO[bytes], name: str) -> int:
        """Copy the samples of one tar stream."""
        count = 0
        for members in iter_tar_samples(stream, name):
            self.add(members)
            count += 1
        return count

    def _finish_shard(self) -> None:
        """Close the open shard, record it, hand it to on_shard."""
        sink, self._sink = self._sink, None
        if sink is None:
            return
        size, digest = sink.close()
        encoder, dim = self._features or ("", 0)
        name = f"{SHARDS_DIR}/{sink.path.name}"
        info = ShardInfo(name, sink.samples, size, digest, self._tallies, encoder, dim)
        self._tallies = {}
        self.shards.append(info)
        if self.on_shard is not None:
            self.on_shard(sink.path)

    def close(self) -> list[ShardInfo]:
        """Finish the last shard; returns every shard written, in order."""
        if not self._closed:
            self._finish_shard()
            self._closed = True
        return list(self.shards)

    def abort(self) -> None:
        """Drop the open shard (finished ones stay)."""
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        self._closed = True

    def __enter__(self) -> ShardWriter:
        """Use as a context: closes on success, drops the partial shard on an error."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close or abort."""
        if exc_type is None:
            self.close()
        else:
            self.abort()
