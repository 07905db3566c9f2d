"""Corpus shards, index and reader: round trips, determinism, split, streaming, memory."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest

from talkinghead.corpus.format import ARRAYS, CROP_SIZE, MEMBERS, ClipMeta, ClipRecord
from talkinghead.corpus.index import build_index, load_index, split_identities
from talkinghead.corpus.reader import CorpusReader, read_samples_per_second
from talkinghead.corpus.shards import (
    CorpusError,
    LazyClipRecord,
    Members,
    ShardWriter,
    decode_meta,
    decode_sample,
    encode_sample,
    iter_tar_samples,
    sample_tar_bytes,
    write_clip_tar,
)

FRAMES, DIM = 6, 8
IDENTITIES = ("ana", "ben", "cai", "dee", "eve", "fay", "gus", "hal")
LANGUAGE = {"ana": "de", "ben": "en", "cai": "en", "dee": "fr"}  # the rest: "en"


def make_record(identity: str, index: int, frames: int = FRAMES) -> ClipRecord:
    """A tiny clip: random arrays, a 16 kHz tone, smooth crops (H.264 keeps them close)."""
    sha = hashlib.sha256(identity.encode()).hexdigest()
    rng = np.random.default_rng([int(sha[:8], 16), index])
    meta = ClipMeta(
        key=f"{sha[:16]}-{index:03d}",
        identity=identity,
        speaker=identity,
        language=LANGUAGE.get(identity, "en"),
        licence="cc-by-4.0" if identity < "e" else "internal",
        source=f"s3://bucket/{identity}.mp4",
        source_sha256=sha,
        start_s=float(index),
        duration_s=frames / 25,
        num_frames=frames,
        source_size=(640, 480),
        feature_dim=DIM,
    )
    f32 = np.float32
    arrays = {
        "landmarks": rng.normal(size=(frames, 478, 3)).astype(f32),
        "canonical": rng.normal(size=(frames, 478, 3)).astype(f32),
        "pose": rng.normal(size=(frames, 6)).astype(f32),
        "eye_ratio": rng.random(frames).astype(f32),
        "mouth_ratio": rng.random(frames).astype(f32),
        "face_box": rng.random((frames, 4)).astype(f32),
        "lips_box": rng.random((frames, 4)).astype(f32),
        "crop_box": np.array([10, 20, 300, 310], f32),
        "audio_features": rng.normal(size=(frames, DIM)).astype(f32),
    }
    t = np.arange(frames * 640) / 16000
    audio = (8000 * np.sin(2 * np.pi * (200 + 20 * index) * t)).astype(np.int16)
    yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE]
    base = rng.integers(40, 200, size=3)
    crops = np.empty((frames, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    masks = np.zeros((frames, CROP_SIZE, CROP_SIZE), np.uint8)
    for i in range(frames):
        crops[i] = np.stack([base[0] + xx // 8, base[1] + yy // 8, base[2] + 0 * xx], -1)
        crops[i, 100 + 4 * i : 140 + 4 * i, 90:170] = (200, 40, 50)  # a "mouth" that moves
        masks[i, 40:, 60 + i : 200 - i] = 255
    return ClipRecord(meta, arrays, audio, crops, masks)


@dataclass
class Clips:
    """Records made and encoded once for the module."""

    records: list[ClipRecord]
    members: list[Members]

    def of(self, identity: str) -> list[int]:
        """Positions of an identity's clips."""
        return [i for i, r in enumerate(self.records) if r.meta.identity == identity]


@pytest.fixture(scope="module")
def clips() -> Clips:
    """Two clips per identity, sorted by key (the order a merge writes them in)."""
    records = sorted(
        (make_record(name, i) for name in IDENTITIES for i in range(2)), key=lambda r: r.meta.key
    )
    return Clips(records, [encode_sample(r) for r in records])


@pytest.fixture(scope="module")
def corpus(clips: Clips, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of all clips, three samples per shard at most."""
    out = tmp_path_factory.mktemp("corpus")
    limit = 3 * max(sample_tar_bytes(m) for m in clips.members) + 20480
    with ShardWriter(out / "shards", max_bytes=limit) as writer:
        for members in clips.members:
            writer.add(members)
    build_index(writer.shards, out, "test", val_fraction=0.25, seed=3, created="2026-01-01")
    return out


class ForwardOnly(io.RawIOBase):
    """A stream that can only be read forward, like an object store's response body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, out: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(out), 1000))  # short reads, as a network gives them
        out[: len(chunk)] = chunk
        return len(chunk)


def opener_for(root: Path, opened: list[str]) -> Callable[[str], BinaryIO]:
    """An opener over a directory that records what it opened."""

    def open_stream(name: str) -> BinaryIO:
        opened.append(name)
        return io.BufferedReader(ForwardOnly((root / name).read_bytes()))

    return open_stream


# --- samples and shards --------------------------------------------------------------------------


def test_sample_round_trip(clips: Clips) -> None:
    record, members = clips.records[0], clips.members[0]
    key = record.meta.key
    assert [name for name, _ in members] == [f"{key}.{suffix}" for suffix in MEMBERS]
    back = decode_sample(members)
    assert back.meta == record.meta
    assert set(back.arrays) == set(ARRAYS)
    for name, arr in record.arrays.items():
        assert back.arrays[name].dtype == arr.dtype and np.array_equal(back.arrays[name], arr)
    assert back.audio.dtype == np.int16 and np.array_equal(back.audio, record.audio)
    assert np.array_equal(back.masks, record.masks)
    error = np.abs(back.crops.astype(int) - record.crops.astype(int))
    assert back.crops.shape == record.crops.shape and back.crops.dtype == np.uint8
    assert error.mean() < 1.5 and np.percentile(error, 99) <= 6
    lazy = decode_sample(members, decode_crops=False)
    assert isinstance(lazy, LazyClipRecord)
    assert np.array_equal(lazy.crop_frames([4, 1]), back.crops[[4, 1]])
    assert np.array_equal(lazy.crops, back.crops) and np.array_equal(lazy.masks, back.masks)


def test_bad_records_and_samples_are_refused(clips: Clips) -> None:
    record = make_record("ana", 9)
    record.arrays["pose"] = record.arrays["pose"][:3]
    with pytest.raises(ValueError, match="pose"):
        encode_sample(record)
    with pytest.raises(CorpusError, match="members"):
        decode_sample(clips.members[0][:4])
    mixed = [*clips.members[0][:4], clips.members[1][4]]
    with pytest.raises(CorpusError, match="several keys"):
        decode_sample(mixed)


def test_shards_are_deterministic_and_ordered(clips: Clips, tmp_path: Path) -> None:
    digests = []
    for run in ("a", "b"):
        with ShardWriter(tmp_path / run) as writer:
            writer.add(clips.records[0])  # encoded here: the H.264 encode is bit-exact too
            for members in clips.members[1:4]:
                writer.add(list(reversed(members)))  # any member order in, MEMBERS order out
        shard = tmp_path / run / "shard-000000.tar"
        digests.append(hashlib.sha256(shard.read_bytes()).hexdigest())
        assert writer.shards[0].sha256 == digests[-1]
        assert writer.shards[0].bytes == shard.stat().st_size
    assert digests[0] == digests[1]
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        infos = tar.getmembers()
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" for i in infos)
    names = [i.name for i in infos]
    expected = [f"{m[0][0].split('.')[0]}.{s}" for m in clips.members[:4] for s in MEMBERS]
    assert names == expected


def test_shards_roll_over_before_max_bytes(clips: Clips, tmp_path: Path) -> None:
    limit = 2 * max(sample_tar_bytes(m) for m in clips.members) + 20480  # + tar padding
    finished: list[str] = []
    with ShardWriter(tmp_path, max_bytes=limit, on_shard=lambda p: finished.append(p.name)) as w:
        for members in clips.members:
            w.add(members)
    names = [f"shard-{i:06d}.tar" for i in range(len(w.shards))]
    assert finished == names and [s.name for s in w.shards] == [f"shards/{n}" for n in names]
    assert len(w.shards) == len(clips.members) // 2
    for shard in w.shards:
        path = tmp_path / shard.name.split("/")[1]
        assert path.stat().st_size == shard.bytes <= limit
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
    assert sum(s.samples for s in w.shards) == len(clips.members)
    with ShardWriter(tmp_path / "one", max_bytes=1) as single:  # a sample never splits
        for members in clips.members[:3]:
            single.add(members)
    assert [s.samples for s in single.shards] == [1, 1, 1]


def test_clip_tars_merge_to_the_same_shards(clips: Clips, tmp_path: Path) -> None:
    tars = []
    for name in IDENTITIES[:3]:
        picked = [clips.records[i] for i in clips.of(name)]
        sha = picked[0].meta.source_sha256
        tars.append(tmp_path / "clips" / f"{sha}.tar")
        assert write_clip_tar(picked[::-1], tars[-1]) == 2
    with open(tars[0], "rb") as f:
        keys = [m[0][0].split(".")[0] for m in iter_tar_samples(f)]
    assert keys == sorted(keys)
    # the workers finish in any order; the merge sorts clip tars by name (the content hash)
    merged = build_index(tars[::-1], tmp_path / "from_tars", "c", created="x")
    # keys start with the source hash, so key order is the merge order
    chosen: list[Members] = [m for m in clips.members if decode_meta(m).identity in IDENTITIES[:3]]
    direct = build_index(chosen, tmp_path / "from_members", "c", created="x")
    assert merged.to_json() == direct.to_json()
    for shard in merged.shards:
        a = (tmp_path / "from_tars" / shard.name).read_bytes()
        assert a == (tmp_path / "from_members" / shard.name).read_bytes()


# --- index ---------------------------------------------------------------------------------------


def test_split_by_identity_is_stable_and_overridable(corpus: Path) -> None:
    index = load_index(corpus)
    split = {e.id: e.split for e in index.identities}
    assert sorted(split) == sorted(IDENTITIES)
    assert sorted(split.values()).count("val") == 2  # round(0.25 * 8)
    assert split == split_identities(IDENTITIES, seed=3, val_fraction=0.25)
    assert split_identities(reversed(IDENTITIES), seed=3, val_fraction=0.25) == split
    seeds = {tuple(sorted(split_identities(IDENTITIES, seed=s).items())) for s in range(6)}
    assert len(seeds) > 1  # the seed matters
    explicit = split_identities(IDENTITIES, seed=3, val_identities=["ana", "hal"])
    assert [n for n, s in explicit.items() if s == "val"] == ["ana", "hal"]
    with pytest.raises(CorpusError, match="zed"):
        split_identities(IDENTITIES, val_identities=["zed"])
    assert list(split_identities(["solo"], val_fraction=0.5).values()) == ["train"]
    # every shard lists who is in it; a clip's identity is in exactly one split
    train = {n for n, s in split.items() if s == "train"}
    val = {n for n, s in split.items() if s == "val"}
    assert not train & val and train | val == set(IDENTITIES)
    for shard in index.shards:
        with tarfile.open(corpus / shard.name) as tar:
            metas = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]  # type: ignore[arg-type]
        assert sorted({m["identity"] for m in metas}) == shard.identities


def test_index_stats_and_versions(clips: Clips, tmp_path: Path) -> None:
    refusals: list[dict[str, Any]] = [
        {"code": "no_audio"},
        {"code": "too_short"},
        {"code": "no_audio"},
        {"code": None},
    ]
    index = build_index(
        clips.members, tmp_path, "stats", val_identities=["ana"], refusals=refusals, created="t"
    )
    stats = index.stats
    assert stats["clips"] == 16 and stats["identities"] == 8 and stats["speakers"] == 8
    assert stats["hours"] == round(16 * FRAMES / 25 / 3600, 4)
    assert (stats["train_identities"], stats["val_identities"]) == (7, 1)
    assert (stats["train_clips"], stats["val_clips"]) == (14, 2)
    assert stats["languages"] == {"de": 2, "en": 12, "fr": 2}
    assert stats["licences"] == {"cc-by-4.0": 8, "internal": 8}
    assert stats["refusals"] == {"no_audio": 2, "too_short": 1, "unknown": 1}
    assert stats["refused"] == 4 and stats["shards"] == 1
    assert (index.audio_encoder, index.feature_dim) == ("logmel", DIM)
    ana = index.identities[index.identity_index("ana")]
    assert (ana.clips, ana.seconds, ana.languages, ana.split) == (2, 2 * FRAMES / 25, ["de"], "val")
    raw = (tmp_path / "corpus.json").read_bytes()
    assert load_index(raw) == index and load_index(tmp_path / "corpus.json") == index
    newer = json.loads(raw)
    newer["format_version"] = 2
    with pytest.raises(CorpusError, match="newer"):
        load_index(json.dumps(newer).encode())
    newer["format_version"], newer["added_later"] = 1, {"x": 1}  # additive fields are fine
    assert load_index(json.dumps(newer).encode()) == index


# --- reader --------------------------------------------------------------------------------------


def test_reader_directory_and_opener_agree(corpus: Path, clips: Clips) -> None:
    opened: list[str] = []
    by_dir = {r.meta.key: r for r in CorpusReader(corpus, split=None).clips()}
    by_opener = {r.meta.key: r for r in CorpusReader(opener_for(corpus, opened), None).clips()}
    assert sorted(by_dir) == sorted(by_opener) == sorted(r.meta.key for r in clips.records)
    for key, record in by_dir.items():
        other = by_opener[key]
        assert record.meta == other.meta and np.array_equal(record.audio, other.audio)
        assert np.array_equal(record.arrays["canonical"], other.arrays["canonical"])
        assert np.array_equal(record.crops, other.crops)
    index = load_index(corpus)
    assert opened == ["corpus.json", *[s.name for s in index.shards]]  # one stream per shard
    for split in ("train", "val"):
        reader = CorpusReader(corpus, split=split)
        seen = [r.meta.identity for r in reader.clips()]
        assert seen and {index.split_of(i) for i in seen} == {split}
        assert len(seen) == index.stats[f"{split}_clips"]


def test_geneface_samples(corpus: Path, clips: Clips) -> None:
    reader = CorpusReader(corpus, split="train")
    records = {r.meta.key: r for r in clips.records}
    samples = list(reader.geneface_samples(window=4, seed=1, epochs=2))
    assert len(samples) == 2 * reader.index.stats["train_clips"]  # one 4-window in 6 frames
    for s in samples:
        assert s["audio"].shape == (4, DIM) and s["audio"].dtype == np.float32
        assert s["landmarks"].shape == (4, 478, 3) and s["landmarks"].dtype == np.float32
        source = records[s["key"]]
        window = slice(s["start"], s["start"] + 4)
        assert np.array_equal(s["landmarks"], source.arrays["canonical"][window])
        assert np.array_equal(s["audio"], source.arrays["audio_features"][window])
        assert s["identity"] == reader.index.identity_index(source.meta.identity)
    orders = [[s["key"] for s in reader.geneface_samples(window=4, seed=k)] for k in range(4)]
    assert len({tuple(o) for o in orders}) > 1 and all(
        sorted(o) == sorted(orders[0]) for o in orders
    )
    mouth = next(reader.geneface_samples(window=4, points="mouth"))
    assert mouth["landmarks"].shape == (4, 40, 3)


def test_s3d_samples(corpus: Path, clips: Clips) -> None:
    reader = CorpusReader(corpus, split="train")
    records = {
        r.meta.key: decode_sample(m) for r, m in zip(clips.records, clips.members, strict=True)
    }
    samples = list(reader.s3d_samples(seed=2, window=5, frames_per_clip=3))
    assert len(samples) == 3 * reader.index.stats["train_clips"]
    for s in samples:
        source = records[s["key"]]
        t, r = s["frame"], s["reference_frame"]
        assert s["target"].shape == s["reference"].shape == (CROP_SIZE, CROP_SIZE, 3)
        assert s["target"].dtype == s["reference"].dtype == np.uint8
        assert s["target_mask"].shape == (CROP_SIZE, CROP_SIZE)
        assert abs(t - r) >= FRAMES // 4
        # the reference is a frame of a clip of the same identity
        assert np.array_equal(s["reference"], source.crops[r])
        assert np.array_equal(s["target"], source.crops[t])
        assert np.array_equal(s["target_mask"], source.masks[t])
        assert s["identity"] == reader.index.identity_index(source.meta.identity)
        assert s["audio"].shape == (5, DIM)
        feats = source.arrays["audio_features"]
        assert np.array_equal(s["audio"][2], feats[t])  # the window is centred on the target
        assert np.array_equal(s["pose"], source.arrays["pose"][t])
    rate = read_samples_per_second(corpus, "s3d", 20)
    assert rate["samples"] == 20 and rate["samples_per_s"] > 0


def _flip(data: bytearray, tar_path: Path, suffix: str) -> None:
    """Damage the middle of the first member ending in `suffix`."""
    with tarfile.open(tar_path) as tar:
        info = next(m for m in tar if m.name.endswith(suffix))
    middle = info.offset_data + info.size // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])


def test_damaged_shards_raise_clear_errors(corpus: Path, tmp_path: Path) -> None:
    index = load_index(corpus)
    shard = corpus / index.shards[0].name
    for suffix, decodes, match in (
        (".npz", True, r"shard-000000\.tar: member \w+-\d+\.npz is corrupt"),
        (".crops.mp4", False, r"shard-000000\.tar does not match its checksum"),
    ):
        damaged = tmp_path / suffix.strip(".")
        (damaged / "shards").mkdir(parents=True)
        (damaged / "corpus.json").write_bytes((corpus / "corpus.json").read_bytes())
        data = bytearray(shard.read_bytes())
        _flip(data, shard, suffix)
        (damaged / index.shards[0].name).write_bytes(bytes(data))
        with pytest.raises(CorpusError, match=match):
            list(CorpusReader(damaged, split=None, decode_crops=decodes).clips())
    truncated = tmp_path / "truncated"
    (truncated / "shards").mkdir(parents=True)
    (truncated / "corpus.json").write_bytes((corpus / "corpus.json").read_bytes())
    (truncated / index.shards[0].name).write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(CorpusError, match=r"shard-000000\.tar"):
        list(CorpusReader(truncated, split=None).clips())


def rekey(members: Members, key: str) -> Members:
    """The same sample under another key (same sizes, so only the shard count differs)."""
    meta = decode_meta(members)
    meta.key = key
    out = [(f"{key}.json", json.dumps(meta.to_json()).encode())]
    return out + [(f"{key}.{name.split('.', 1)[1]}", data) for name, data in members[1:]]


def _peak_reading(root: Path) -> int:
    """tracemalloc peak (bytes) of one S3D epoch and one pass of clips over a corpus."""
    reader = CorpusReader(root, split=None, shuffle_buffer=2)
    tracemalloc.start()
    try:
        # one target per clip: the frames decoded, so the bytes held, are the same for every clip
        n = sum(1 for _ in reader.s3d_samples(frames_per_clip=1))
        n += sum(1 for r in reader.clips() if r.masks.any())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 2 * len(reader.index.shards)
    return peak


def test_memory_does_not_grow_with_shards(clips: Clips, tmp_path: Path) -> None:
    peaks = {}
    # 3 shards already fill the 2-sample shuffle buffer: from there on only the count grows
    for shards in (3, 12):
        root = tmp_path / str(shards)
        with ShardWriter(root / "shards", max_bytes=1) as writer:  # one clip per shard
            for i in range(shards):
                writer.add(rekey(clips.members[0], f"{i:016x}-000"))
        build_index(writer.shards, root, "mem", val_fraction=0.0)
        _peak_reading(root)  # warm caches (imports, codec tables) before measuring
        peaks[shards] = _peak_reading(root)
    assert peaks[12] < 1.05 * peaks[3] + 50_000, peaks
