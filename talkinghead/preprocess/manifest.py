"""The versioned training-dataset format: a streaming writer, a validating loader, a lazy reader.

Layout (format 1, see docs/dataset.md): `manifest.json` (written last, atomically),
`frames/{i:06d}.jpg`, `masks/{i:06d}.png`, `background.png` and one `.npy` file per array.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from talkinghead.preprocess.audio import DEFAULT_CONTEXT, window_at
from talkinghead.preprocess.masks import LABEL_NAMES

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FRAME_PATTERN = "frames/{index:06d}.jpg"
MASK_PATTERN = "masks/{index:06d}.png"
BACKGROUND_NAME = "background.png"
JPEG_QUALITY = 95

# name -> (shape after the frame axis, None = any size; dtype). All are required.
ARRAY_SPECS: dict[str, tuple[tuple[int | None, ...], str]] = {
    "landmarks": ((478, 3), "float32"),
    "poses": ((4, 4), "float32"),
    "euler": ((3,), "float32"),
    "eye": ((), "float32"),
    "lips_bbox": ((4,), "float32"),
    "face_bbox": ((4,), "float32"),
    "audio_features": ((None,), "float32"),
    "valid": ((), "bool"),
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class DatasetError(ValueError):
    """A directory that is not a complete, readable dataset of a supported version."""


@dataclass(frozen=True)
class Split:
    """Train/val frame indices as half-open [start, stop) ranges; val is a held-out tail block."""

    train: list[tuple[int, int]]
    val: list[tuple[int, int]]
    gap: int

    def indices(self, name: Literal["train", "val"]) -> list[int]:
        """All frame indices of one part."""
        ranges = self.train if name == "train" else self.val
        return [i for start, stop in ranges for i in range(start, stop)]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "train": [list(r) for r in self.train],
            "val": [list(r) for r in self.val],
            "gap": self.gap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        """Parse the JSON form."""
        return cls(
            train=[(int(a), int(b)) for a, b in data["train"]],
            val=[(int(a), int(b)) for a, b in data["val"]],
            gap=int(data.get("gap", 0)),
        )


def make_split(num_frames: int, val_fraction: float = 0.1, gap: int = 12) -> Split:
    """Contiguous tail of `val_fraction` for validation, `gap` frames dropped before it.

    The gap (default 12 frames ≈ 0.5 s at 25 fps, more than the audio window's half width)
    keeps the audio window and temporal correlation from leaking train content into val; it
    shrinks on tiny clips so that at least one training frame remains.
    """
    if num_frames < 2:
        raise ValueError("a split needs at least 2 frames")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    n_val = min(num_frames - 1, max(1, round(num_frames * val_fraction)))
    gap = max(0, min(gap, num_frames - n_val - 1))
    train_stop = num_frames - n_val - gap
    return Split(train=[(0, train_stop)], val=[(num_frames - n_val, num_frames)], gap=gap)


@dataclass
class Manifest:
    """The parsed `manifest.json` of a dataset (see docs/dataset.md for every field)."""

    version: int
    created_at: str
    source: dict[str, Any]
    fps: float
    size: int
    num_frames: int
    intrinsics: list[list[float]]  # 3x3, pixels of the square crop
    crop: dict[str, int]  # x0, y0, side in source pixels
    audio: dict[str, Any]  # encoder, dim, context, sample_rate
    split: Split
    files: dict[str, Any]
    labels: dict[str, int]
    quality: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path = field(default=Path("."), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (without `root`)."""
        data = asdict(self)
        data.pop("root")
        data["split"] = self.split.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path) -> Manifest:
        """Parse a version-1 JSON dict; raises DatasetError on missing fields."""
        try:
            return cls(
                version=int(data["version"]),
                created_at=str(data["created_at"]),
                source=dict(data.get("source", {})),
                fps=float(data["fps"]),
                size=int(data["size"]),
                num_frames=int(data["num_frames"]),
                intrinsics=[[float(v) for v in row] for row in data["intrinsics"]],
                crop={k: int(v) for k, v in data["crop"].items()},
                audio=dict(data["audio"]),
                split=Split.from_dict(data["split"]),
                files=dict(data["files"]),
                labels={k: int(v) for k, v in data["labels"].items()},
                quality=dict(data.get("quality", {})),
                extra=dict(data.get("extra", {})),
                root=root,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{root / MANIFEST_NAME} is malformed: {exc!r}") from exc

    def path(self, kind: Literal["frame", "mask"], index: int) -> Path:
        """File of one frame image or mask."""
        pattern = self.files["frames"] if kind == "frame" else self.files["masks"]
        return self.root / pattern.format(index=index)

    def array_path(self, name: str) -> Path:
        """File of one array."""
        try:
            return self.root / self.files["arrays"][name]["file"]
        except KeyError:
            raise KeyError(f"dataset has no array {name!r}") from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _imwrite(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    """cv2.imwrite that raises on failure."""
    if not cv2.imwrite(str(path), image, params or []):
        raise OSError(f"could not write {path}")


class DatasetWriter:
    """Writes a dataset incrementally; it is only a dataset once `finalize` wrote manifest.json."""

    def __init__(self, root: Path, size: int, fps: float, overwrite: bool = False) -> None:
        """Prepare `root`; an existing complete dataset there is refused unless `overwrite`."""
        self.root = Path(root)
        self.size = int(size)
        self.fps = float(fps)
        manifest = self.root / MANIFEST_NAME
        if manifest.exists():
            if not overwrite:
                raise FileExistsError(f"{self.root} already holds a dataset")
            manifest.unlink()  # from now on the directory reads as incomplete
        (self.root / "frames").mkdir(parents=True, exist_ok=True)
        (self.root / "masks").mkdir(parents=True, exist_ok=True)
        self._arrays: dict[str, dict[str, Any]] = {}

    def add_frame(self, index: int, rgb: np.ndarray, labels: np.ndarray) -> None:
        """Write crop RGB (S, S, 3) uint8 as JPEG and labels (S, S) uint8 as PNG for `index`."""
        s = self.size
        if rgb.shape != (s, s, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 ({s}, {s}, 3), got {rgb.dtype} {rgb.shape}")
        if labels.shape != (s, s):
            raise ValueError(f"labels must be ({s}, {s}), got {labels.shape}")
        if index < 0:
            raise ValueError("frame index must be >= 0")
        labels = labels.astype(np.uint8, copy=False)
        if labels.size and int(labels.max()) >= len(LABEL_NAMES):
            raise ValueError(f"label values must be < {len(LABEL_NAMES)}")
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        _imwrite(
            self.root / FRAME_PATTERN.format(index=index),
            bgr,
            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
        )
        _imwrite(self.root / MASK_PATTERN.format(index=index), labels)

    def write_background(self, rgb: np.ndarray) -> None:
        """Write the background plate (S, S, 3) uint8 as PNG."""
        if rgb.shape != (self.size, self.size, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"background must be uint8 ({self.size}, {self.size}, 3)")
        _imwrite(self.root / BACKGROUND_NAME, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def write_arrays(self, **arrays: np.ndarray) -> None:
        """Save per-frame arrays as `<name>.npy`; known names are checked against ARRAY_SPECS."""
        for name, value in arrays.items():
            if not _NAME_RE.match(name):
                raise ValueError(f"invalid array name {name!r}")
            arr = np.asarray(value)
            if name in ARRAY_SPECS:
                tail, dtype = ARRAY_SPECS[name]
                if arr.ndim != 1 + len(tail) or any(
                    want is not None and got != want
                    for got, want in zip(arr.shape[1:], tail, strict=True)
                ):
                    raise ValueError(f"array {name!r} must be (T, {tail}), got {arr.shape}")
                arr = arr.astype(dtype, copy=False)
            if arr.ndim == 0:
                raise ValueError(f"array {name!r} needs a frame axis")
            path = self.root / f"{name}.npy"
            tmp = path.with_name(f".{name}.tmp-{os.getpid()}.npy")
            np.save(tmp, np.ascontiguousarray(arr))
            os.replace(tmp, path)
            self._arrays[name] = {
                "file": path.name,
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
            }

    def array_stream(self, name: str, rows: int, tail: tuple[int, ...], dtype: str) -> ArrayStream:
        """Open `<name>.npy` of shape (rows, *tail) to be written in blocks (see ArrayStream)."""
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid array name {name!r}")
        if name in ARRAY_SPECS:
            want_tail, want_dtype = ARRAY_SPECS[name]
            if len(want_tail) != len(tail) or any(
                w is not None and g != w for g, w in zip(tail, want_tail, strict=True)
            ):
                raise ValueError(f"array {name!r} must be (T, {want_tail}), got {tail}")
            dtype = want_dtype

        def done(shape: tuple[int, ...]) -> None:
            self._arrays[name] = {"file": f"{name}.npy", "shape": list(shape), "dtype": dtype}

        return ArrayStream(self.root / f"{name}.npy", rows, tail, dtype, done)

    def finalize(self, meta: dict[str, Any], quality: dict[str, Any], split: Split) -> Manifest:
        """Check completeness, then write manifest.json atomically and return the Manifest.

        `meta` needs `intrinsics` (3x3), `crop` {x0, y0, side} (or [x0, y0, side]) and `audio`
        {encoder, dim, context (default 8)}; optional `source` {...}; other keys go to `extra`.
        """
        missing = [name for name in ARRAY_SPECS if name not in self._arrays]
        if missing:
            raise DatasetError(f"arrays not written: {', '.join(missing)}")
        lengths = {name: spec["shape"][0] for name, spec in self._arrays.items()}
        num_frames = lengths["valid"]
        if any(n != num_frames for n in lengths.values()):
            raise DatasetError(f"arrays disagree on the number of frames: {lengths}")
        for key in ("intrinsics", "crop", "audio"):
            if key not in meta:
                raise ValueError(f"meta needs {key!r}")
        intrinsics = np.asarray(meta["intrinsics"], dtype=np.float64)
        if intrinsics.shape != (3, 3):
            raise ValueError(f"intrinsics must be 3x3, got {intrinsics.shape}")
        raw_crop = meta["crop"]
        if isinstance(raw_crop, dict):
            crop = {k: int(raw_crop[k]) for k in ("x0", "y0", "side")}
            crop.update({k: int(v) for k, v in raw_crop.items() if k not in crop})
        else:  # [x0, y0, side]
            x0, y0, side = (int(v) for v in raw_crop)
            crop = {"x0": x0, "y0": y0, "side": side}
        audio = dict(meta["audio"])
        audio_dim = self._arrays["audio_features"]["shape"][1]
        if int(audio.get("dim", audio_dim)) != audio_dim:
            raise DatasetError(f"audio dim {audio['dim']} != audio_features width {audio_dim}")
        audio["dim"] = audio_dim
        audio.setdefault("sample_rate", 16_000)
        audio.setdefault("context", DEFAULT_CONTEXT)
        for start, stop in [*split.train, *split.val]:
            if not 0 <= start <= stop <= num_frames:
                raise ValueError(f"split range {(start, stop)} outside 0..{num_frames}")
        if not (self.root / BACKGROUND_NAME).is_file():
            raise DatasetError("background.png not written")
        absent = [
            i
            for i in range(num_frames)
            if not (self.root / FRAME_PATTERN.format(index=i)).is_file()
            or not (self.root / MASK_PATTERN.format(index=i)).is_file()
        ]
        if absent:
            raise DatasetError(f"{len(absent)} frames/masks not written (first: {absent[0]})")
        known = {"intrinsics", "crop", "audio", "source"}
        manifest = Manifest(
            version=FORMAT_VERSION,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=dict(meta.get("source", {})),
            fps=self.fps,
            size=self.size,
            num_frames=num_frames,
            intrinsics=intrinsics.tolist(),
            crop=crop,
            audio=audio,
            split=split,
            files={
                "frames": FRAME_PATTERN,
                "masks": MASK_PATTERN,
                "background": BACKGROUND_NAME,
                "arrays": dict(sorted(self._arrays.items())),
            },
            labels={name: value for value, name in LABEL_NAMES.items()},
            quality=dict(quality),
            extra={k: v for k, v in meta.items() if k not in known},
            root=self.root,
        )
        text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False, default=_json_default)
        _atomic_write_bytes(self.root / MANIFEST_NAME, (text + "\n").encode("utf-8"))
        return manifest


class ArrayStream:
    """A `.npy` file written block by block (so a (T, 478, 3) array never sits in memory whole).

    It is written to a temporary name and moved into place by `close` once all rows arrived.
    """

    def __init__(
        self,
        path: Path,
        rows: int,
        tail: tuple[int, ...],
        dtype: str,
        on_close: Callable[[tuple[int, ...]], None],
    ) -> None:
        """Write the header of a (rows, *tail) `dtype` array."""
        self.path = path
        self.shape = (int(rows), *(int(t) for t in tail))
        self.dtype = np.dtype(dtype)
        self.written = 0
        self._on_close = on_close
        self._tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self._file, {**header, "shape": self.shape})

    def write(self, block: np.ndarray) -> None:
        """Append rows (k, *tail)."""
        arr = np.ascontiguousarray(block, dtype=self.dtype)
        if arr.shape[1:] != self.shape[1:] or self.written + len(arr) > self.shape[0]:
            raise ValueError(f"block {arr.shape} does not fit array {self.shape}")
        self._file.write(arr.tobytes())
        self.written += len(arr)

    def close(self) -> None:
        """Check that every row was written, then move the file into place."""
        self._file.close()
        if self.written != self.shape[0]:
            self._tmp.unlink(missing_ok=True)
            raise ValueError(f"{self.written} of {self.shape[0]} rows written to {self.path.name}")
        os.replace(self._tmp, self.path)
        self._on_close(self.shape)

    def __enter__(self) -> ArrayStream:
        """Context manager entry."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Close on success; on error drop the partial file."""
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and paths in meta/quality become plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_manifest(root: Path, check_frames: bool = True) -> Manifest:
    """Parse and validate `root/manifest.json`: version, arrays' shapes, background and frames."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(f"{root} is not a complete dataset: {MANIFEST_NAME} is missing")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise DatasetError(f"{path} has no integer format version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"dataset format version {version} is not supported by this reader "
            f"(supports {FORMAT_VERSION}); re-run preprocessing or upgrade talkinghead"
        )
    manifest = Manifest.from_dict(data, root)
    for name in ARRAY_SPECS:
        if name not in manifest.files.get("arrays", {}):
            raise DatasetError(f"dataset lacks the required array {name!r}")
    for spec in manifest.files["arrays"].values():
        file = root / spec["file"]
        if not file.is_file():
            raise DatasetError(f"array file {file} is missing")
        arr = np.load(file, mmap_mode="r")
        if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
            raise DatasetError(
                f"{file.name}: {arr.dtype}{list(arr.shape)} != manifest "
                f"{spec['dtype']}{spec['shape']}"
            )
        if arr.shape[0] != manifest.num_frames:
            raise DatasetError(f"{file.name} has {arr.shape[0]} rows, not {manifest.num_frames}")
    if not (root / manifest.files["background"]).is_file():
        raise DatasetError(f"{manifest.files['background']} is missing")
    if check_frames:
        for i in range(manifest.num_frames):
            if not manifest.path("frame", i).is_file() or not manifest.path("mask", i).is_file():
                raise DatasetError(f"frame or mask {i} is missing")
    return manifest


class DatasetReader:
    """Streams a dataset from disk: images decoded on demand, arrays memory-mapped read-only."""

    def __init__(self, root: Path, check_frames: bool = True) -> None:
        """Load and validate the manifest; nothing else is read yet."""
        self.manifest = load_manifest(Path(root), check_frames=check_frames)
        self.root = self.manifest.root
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        """Number of frames."""
        return self.manifest.num_frames

    def _check(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} outside 0..{len(self) - 1}")
        return index

    def frame(self, index: int) -> np.ndarray:
        """Crop RGB (S, S, 3) uint8 of one frame, decoded from disk now."""
        path = self.manifest.path("frame", self._check(index))
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"cannot decode {path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def labels(self, index: int) -> np.ndarray:
        """Semantic labels (S, S) uint8 of one frame (0 bg, 1 head, 2 neck, 3 torso)."""
        path = self.manifest.path("mask", self._check(index))
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise DatasetError(f"cannot decode {path}")
        return labels

    def background(self) -> np.ndarray:
        """Background plate (S, S, 3) uint8 RGB."""
        bgr = cv2.imread(str(self.root / self.manifest.files["background"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError("cannot decode the background plate")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def array(self, name: str) -> np.ndarray:
        """A per-frame array as a read-only np.memmap (opened once, then cached)."""
        if name not in self._arrays:
            self._arrays[name] = np.load(self.manifest.array_path(name), mmap_mode="r")
        return self._arrays[name]

    @property
    def intrinsics(self) -> np.ndarray:
        """Camera matrix (3, 3) float32 of the crop."""
        return np.asarray(self.manifest.intrinsics, dtype=np.float32)

    @property
    def landmarks(self) -> np.ndarray:
        """(T, 478, 3) float32 crop pixels (x, y, z)."""
        return self.array("landmarks")

    @property
    def poses(self) -> np.ndarray:
        """(T, 4, 4) float32 camera-from-head transforms."""
        return self.array("poses")

    @property
    def audio_features(self) -> np.ndarray:
        """(T, dim) float32 audio features aligned to frames."""
        return self.array("audio_features")

    @property
    def valid(self) -> np.ndarray:
        """(T,) bool: frame has a tracked face."""
        return self.array("valid")

    def audio_window(self, index: int) -> np.ndarray:
        """Edge-padded audio window (2 * context, dim) of one frame, read from the memmap."""
        context = int(self.manifest.audio.get("context", DEFAULT_CONTEXT))
        return window_at(self.audio_features, self._check(index), context)

    def split(self, name: Literal["train", "val"], valid_only: bool = True) -> list[int]:
        """Frame indices of the train or val part; by default only frames with a tracked face."""
        if name not in ("train", "val"):
            raise ValueError("split name must be 'train' or 'val'")
        indices = self.manifest.split.indices(name)
        if not valid_only:
            return indices
        valid = self.valid
        return [i for i in indices if bool(valid[i])]
