"""The corpus index `corpus.json`: shards, identities with their split, statistics.

The split is by identity, never by clip: a person seen in training must not be judged in
validation. It is a pure function of the identity names and the seed (or an explicit list),
so rebuilding a corpus from the same sources gives the same split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from talkinghead.corpus.format import FORMAT_VERSION, ClipRecord
from talkinghead.corpus.shards import (
    SHARD_MAX_BYTES,
    SHARDS_DIR,
    CorpusError,
    IdentityTally,
    ShardInfo,
    ShardWriter,
)

INDEX_FILE = "corpus.json"
SPLITS = ("train", "val")

Sample = ClipRecord | Sequence[tuple[str, bytes]]


@dataclass
class ShardEntry:
    """One shard as the index lists it."""

    name: str  # relative to the corpus root: "shards/shard-000000.tar"
    samples: int
    bytes: int
    sha256: str
    identities: list[str]  # who appears in it, so a split reader can skip the shard


@dataclass
class IdentityEntry:
    """One person: their split and what the corpus holds of them."""

    id: str
    split: str
    clips: int
    seconds: float
    languages: list[str]
    speakers: list[str]


@dataclass
class CorpusIndex:
    """The parsed `corpus.json`."""

    format_version: int
    corpus_id: str
    created: str
    audio_encoder: str
    feature_dim: int
    shards: list[ShardEntry]
    identities: list[IdentityEntry]
    split: dict[str, Any]
    stats: dict[str, Any]
    _position: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def identity_index(self, identity: str) -> int:
        """The identity's row in the sorted identity list (stable across splits)."""
        if not self._position:
            self._position = {e.id: i for i, e in enumerate(self.identities)}
        try:
            return self._position[identity]
        except KeyError:
            raise CorpusError(f"identity {identity!r} is not in corpus {self.corpus_id}") from None

    def split_of(self, identity: str) -> str:
        """'train' or 'val'."""
        return self.identities[self.identity_index(identity)].split

    def shards_for(self, split: str | None) -> list[ShardEntry]:
        """The shards that hold any clip of the split (all of them for None)."""
        if split is None:
            return list(self.shards)
        members = {e.id for e in self.identities if e.split == split}
        return [s for s in self.shards if not s.identities or members & set(s.identities)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "format_version": self.format_version,
            "corpus_id": self.corpus_id,
            "created": self.created,
            "audio_encoder": self.audio_encoder,
            "feature_dim": self.feature_dim,
            "shards": [vars(s) for s in self.shards],
            "identities": [vars(e) for e in self.identities],
            "split": self.split,
            "stats": self.stats,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorpusIndex:
        """Parse an index; refuses a newer format version, ignores fields it does not know."""
        version = data.get("format_version")
        if not isinstance(version, int):
            raise CorpusError("corpus.json has no integer format_version")
        if version > FORMAT_VERSION:
            raise CorpusError(
                f"corpus format version {version} is newer than this reader's "
                f"{FORMAT_VERSION}; upgrade talkinghead to read it"
            )
        try:
            shards = [ShardEntry(**_known(ShardEntry, s)) for s in data["shards"]]
            identities = [IdentityEntry(**_known(IdentityEntry, e)) for e in data["identities"]]
            return cls(
                format_version=version,
                corpus_id=str(data["corpus_id"]),
                created=str(data.get("created", "")),
                audio_encoder=str(data.get("audio_encoder", "")),
                feature_dim=int(data.get("feature_dim", 0)),
                shards=shards,
                identities=identities,
                split=dict(data.get("split", {})),
                stats=dict(data.get("stats", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusError(f"corpus.json is malformed: {exc!r}") from exc


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that the dataclass `cls` has fields for."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def split_identities(
    identities: Iterable[str],
    seed: int = 0,
    val_fraction: float = 0.15,
    val_identities: Iterable[str] | None = None,
) -> dict[str, str]:
    """identity → 'train' | 'val': an explicit list wins, else the seed's hash order decides."""
    # Without a list, the first round(fraction * n) identities in sha256("seed:identity") order
    # go to validation: at least one when the fraction is positive and there are two or more,
    # never all of them (there must be something to train on).
    names = sorted(set(identities))
    if val_identities is not None:
        chosen = set(val_identities)
        unknown = chosen - set(names)
        if unknown:
            # a typo would silently leave the intended person in training
            raise CorpusError(f"val_identities not in the corpus: {sorted(unknown)}")
        return {n: "val" if n in chosen else "train" for n in names}
    if not 0.0 <= val_fraction < 1.0:
        raise CorpusError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    val = set(order[:n_val])
    return {n: "val" if n in val else "train" for n in names}


def _write_shards(
    source: Iterable[Path | Sample], out_dir: Path, max_bytes: int
) -> list[ShardInfo]:
    """Merge clip tars (in name order, i.e. by content hash) or samples into shards."""
    items = list(source)
    paths = [i for i in items if isinstance(i, Path)]
    if paths and len(paths) != len(items):
        raise CorpusError("give build_index clip tars or samples, not both")
    with ShardWriter(out_dir / SHARDS_DIR, max_bytes) as writer:
        if paths:
            # the workers finish in any order; the merge order must not depend on it
            for path in sorted(paths, key=lambda p: p.name):
                writer.add_tar(path)
        else:
            for sample in items:
                writer.add(sample)  # type: ignore[arg-type]
    return writer.shards


def build_index(
    source: Iterable[ShardInfo] | Iterable[Path] | Iterable[Sample],
    out_dir: Path,
    corpus_id: str,
    *,
    val_identities: Iterable[str] | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    refusals: Iterable[dict[str, Any]] | None = None,
    created: str | None = None,
    max_shard_bytes: int = SHARD_MAX_BYTES,
) -> CorpusIndex:
    """Write `out_dir/corpus.json` (and first the shards, unless given ShardWriter's)."""
    # `source` is what ShardWriter.close() returned, or clip tar paths, or samples (records or
    # member lists) in the order they should be stored.
    items = list(source)
    if items and all(isinstance(i, ShardInfo) for i in items):
        shards: list[ShardInfo] = items  # type: ignore[assignment]
    else:
        shards = _write_shards(items, Path(out_dir), max_shard_bytes)  # type: ignore[arg-type]
    tallies: dict[str, IdentityTally] = {}
    for shard in shards:
        for identity, tally in shard.identities.items():
            tallies.setdefault(identity, IdentityTally()).merge(tally)
    features = {(s.audio_encoder, s.feature_dim) for s in shards if s.samples}
    if len(features) > 1:
        raise CorpusError(f"the shards hold several audio feature kinds: {sorted(features)}")
    encoder, dim = features.pop() if features else ("", 0)
    explicit = list(val_identities) if val_identities is not None else None
    split = split_identities(tallies, seed, val_fraction, explicit)
    identities = [
        IdentityEntry(
            id=name,
            split=split[name],
            clips=t.clips,
            seconds=round(t.seconds, 3),
            languages=sorted(t.languages),
            speakers=sorted(t.speakers),
        )
        for name, t in sorted(tallies.items())
    ]
    index = CorpusIndex(
        format_version=FORMAT_VERSION,
        corpus_id=corpus_id,
        created=created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        audio_encoder=encoder,
        feature_dim=dim,
        shards=[ShardEntry(**s.to_json()) for s in shards],
        identities=identities,
        split={
            "by": "identity",
            "seed": seed,
            "val_fraction": val_fraction,
            "val_identities": sorted(explicit) if explicit is not None else None,
        },
        stats=corpus_stats(tallies, split, shards, list(refusals or [])),
    )
    write_index(index, Path(out_dir))
    return index


def corpus_stats(
    tallies: dict[str, IdentityTally],
    split: dict[str, str],
    shards: Sequence[ShardInfo],
    refusals: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The numbers an operator looks at first (see docs/corpus.md, Statistics)."""
    languages: dict[str, int] = {}
    licences: dict[str, int] = {}
    speakers: set[str] = set()
    for tally in tallies.values():
        for counts, values in ((languages, tally.languages), (licences, tally.licences)):
            for value, n in values.items():
                counts[value] = counts.get(value, 0) + n
        speakers.update(tally.speakers)
    by_code: dict[str, int] = {}
    for refusal in refusals:
        code = str(refusal.get("code") or "unknown")
        by_code[code] = by_code.get(code, 0) + 1
    stats: dict[str, Any] = {
        "hours": round(sum(t.seconds for t in tallies.values()) / 3600, 4),
        "clips": sum(t.clips for t in tallies.values()),
        "identities": len(tallies),
        "speakers": len(speakers),
        "shards": len(shards),
        "bytes": sum(s.bytes for s in shards),
    }
    for part in SPLITS:
        names = [n for n, s in split.items() if s == part]
        stats[f"{part}_identities"] = len(names)
        stats[f"{part}_clips"] = sum(tallies[n].clips for n in names)
        stats[f"{part}_hours"] = round(sum(tallies[n].seconds for n in names) / 3600, 4)
    stats["languages"] = dict(sorted(languages.items()))
    stats["licences"] = dict(sorted(licences.items()))
    stats["refusals"] = dict(sorted(by_code.items()))
    stats["refused"] = sum(by_code.values())
    return stats


def write_index(index: CorpusIndex, out_dir: Path) -> Path:
    """Write corpus.json atomically (a reader sees the old index or the new, never half)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / INDEX_FILE
    part = out_dir / f".{INDEX_FILE}.part"
    with open(part, "w") as f:
        json.dump(index.to_json(), f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    return path


def load_index(source: Path | str | bytes) -> CorpusIndex:
    """Parse corpus.json from its bytes, its path, or the corpus directory holding it."""
    if isinstance(source, bytes):
        raw = source
    else:
        path = Path(source)
        path = path / INDEX_FILE if path.is_dir() else path
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CorpusError(f"cannot read the corpus index {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CorpusError(f"corpus.json is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorpusError("corpus.json is not a JSON object")
    return CorpusIndex.from_json(data)
