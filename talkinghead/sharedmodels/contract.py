"""The shared-model contract: models trained once from a multi-speaker corpus, used by families.

A renderer family trains per avatar; some of its parts (an audio-to-motion generator, a
landmark sync expert, a generalised field) are learned from many speakers instead. Each such
part is a *kind*: one object that satisfies `SharedModelKind`, listed by the registry the way
families are. The services never compare kind names: they ask the registry and call these.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from talkinghead.corpus.format import ClipRecord
from talkinghead.corpus.reader import CorpusReader, Opener
from talkinghead.families.contract import TrainingRun, TrainOptions

__all__ = [
    "ClipStream",
    "CorpusSource",
    "ReaderSource",
    "SharedModelError",
    "SharedModelKind",
    "TrainOptions",
    "TrainingRun",
]


class SharedModelError(Exception):
    """A failure the operator must see, with a stable code (the model job fails with it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ClipStream(Protocol):
    """Passes over one corpus split, clip by clip (what a `CorpusReader` offers)."""

    def clips(self, seed: int | None = None) -> Iterator[ClipRecord]:
        """Every clip of the split once; `seed` shuffles the order (None: the corpus' order)."""
        ...


class CorpusSource(Protocol):
    """Opens one split of a corpus, wherever it is stored (a local directory, an object store).

    The same seed must give the same clip order on every call: exact resume relies on it.
    """

    def __call__(self, split: str | None) -> ClipStream:
        """A stream over `split` ("train", "val" or None for every clip)."""
        ...


@dataclass(frozen=True)
class ReaderSource:
    """A CorpusSource over `CorpusReader`: a corpus directory or an opener of its objects."""

    location: Path | str | Opener
    verify: bool = True  # check each shard's checksum when it has been read

    def __call__(self, split: str | None) -> CorpusReader:
        """A reader of `split` (crops and masks are decoded only if a model touches them)."""
        return CorpusReader(self.location, split=split, verify=self.verify)


@runtime_checkable
class SharedModelKind(Protocol):
    """Everything the platform needs from one kind of shared model."""

    name: str
    family: str  # the renderer family it serves; "" when any family may use it
    description: str

    def default_config(self) -> dict[str, Any]:
        """The JSON config a model of this kind trains with when nothing is overridden."""
        ...

    def config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults with `overrides` applied, validated; SharedModelError("invalid_config")."""
        ...

    def open_training(
        self, corpus: CorpusSource, workdir: Path, config: dict[str, Any], options: TrainOptions
    ) -> TrainingRun:
        """A training run that resumes from `workdir`'s checkpoint when there is one."""
        ...

    def export(self, run: TrainingRun, out_dir: Path) -> dict[str, float]:
        """Write the trained weights and their JSON description; validation-split metrics."""
        ...

    def load(self, export_dir: Path) -> Any:
        """The trained module of an export, ready for inference (what a family uses)."""
        ...
