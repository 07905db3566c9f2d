"""A stored renderer artifact: manifest, TorchScript renderer, assets; no training code needed.

Layout of an exported avatar (a directory locally, a key prefix in the object store):

- `manifest.json`  format, family, frame size, the renderer's named inputs (name, dtype,
  per-frame shape, in call order), family facts (e.g. the audio encoder spec), and the sha256
  and size of every other file (written last: its presence commits the export)
- `renderer.ts`    TorchScript module: one frame's inputs, each with a leading axis of 1, in
  the manifest's order -> (1, height, width, 4) uint8 RGBA, colour premultiplied by alpha
- `assets.npz`     arrays the family needs at render time; always `background` (H, W, 3) uint8

Format 2 (before families were plugins) had fixed inputs pose, audio and eye; it still loads.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.devices import default_device
from talkinghead.families.contract import InputSpec

FORMAT = 3
FORMATS = (2, 3)  # formats this version loads
MANIFEST = "manifest.json"
RENDERER = "renderer.ts"
ASSETS = "assets.npz"
FILES = (RENDERER, ASSETS)


class ArtifactError(Exception):
    """An export that cannot be used: missing file, checksum mismatch, unknown format."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_assets(path: Path, assets: Mapping[str, np.ndarray]) -> None:
    """Write render-time arrays as an uncompressed npz (loads without pickle)."""
    if "background" not in assets:
        raise ValueError("assets need a background plate")
    with path.open("wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in assets.items()})


def load_assets(path: Path) -> dict[str, np.ndarray]:
    """Read arrays written by `save_assets`."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def manifest_inputs(manifest: Mapping[str, Any]) -> list[InputSpec]:
    """The renderer's named inputs in call order (format 2 had pose, audio and eye)."""
    inputs = manifest["inputs"]
    if manifest.get("format") == 2:
        return [
            InputSpec("pose", tuple(inputs["pose"])),
            InputSpec("audio", tuple(inputs["audio"])),
            InputSpec("eye", tuple(inputs["eye"])),
        ]
    return [InputSpec.from_dict(item) for item in inputs]


def conform_inputs(
    specs: list[InputSpec], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """`inputs` in the specs' order and dtypes; ValueError naming what is missing or mis-shaped."""
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        names = [s.name for s in specs]
        raise ValueError(f"missing inputs {missing}; this renderer takes {names}")
    extra = sorted(set(inputs) - {s.name for s in specs})
    if extra:
        raise ValueError(f"inputs {extra} are not this renderer's")
    sizes = {len(inputs[s.name]) for s in specs}
    if len(sizes) != 1:
        raise ValueError(f"every input needs the same number of frames, got {sorted(sizes)}")
    out = {}
    for spec in specs:
        value = np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
        if tuple(value.shape[1:]) != spec.shape:
            raise ValueError(
                f"{spec.name}: need (B, {spec.shape}) per frame, got {tuple(value.shape[1:])}"
            )
        out[spec.name] = value
    return out


def frame_shape(manifest: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of the frames the renderer returns."""
    size = int(manifest["size"])
    return int(manifest.get("height", size)), int(manifest.get("width", size))


def check_output(
    module: torch.jit.ScriptModule, inputs: list[InputSpec], shape: tuple[int, int]
) -> None:
    """One frame of zeros through the renderer must give (1, H, W, 4) uint8 like the plate."""
    device = next(iter(module.buffers()), torch.zeros(())).device
    zeros = [torch.zeros((1, *spec.shape), dtype=getattr(torch, spec.dtype), device=device)
             for spec in inputs]  # fmt: skip
    with torch.no_grad():
        out = module(*zeros)
    if tuple(out.shape) != (1, *shape, 4) or out.dtype != torch.uint8:
        raise ValueError(
            f"the renderer returns {out.dtype} {tuple(out.shape)}, not uint8 (1, {shape[0]}, "
            f"{shape[1]}, 4) like its background plate"
        )


def write_export(
    out_dir: Path,
    module: torch.jit.ScriptModule,
    assets: Mapping[str, np.ndarray],
    family: str,
    inputs: list[InputSpec],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write renderer, assets and (last) the manifest into `out_dir`; returns the manifest."""
    height, width = np.asarray(assets["background"]).shape[:2]
    if any(-1 in spec.shape for spec in inputs):
        raise ValueError("an export's input shapes are concrete (no -1)")
    check_output(module, inputs, (int(height), int(width)))
    out_dir.mkdir(parents=True, exist_ok=True)
    module.save(str(out_dir / RENDERER))
    save_assets(out_dir / ASSETS, assets)
    manifest: dict[str, Any] = {
        **(info or {}),
        "format": FORMAT,
        "family": family,
        "size": int(max(height, width)),
        "height": int(height),
        "width": int(width),
        "fps": 25,
        "inputs": [spec.to_dict() for spec in inputs],
        "output": "uint8 RGBA (height, width, 4), colour premultiplied by alpha",
        "torch": torch.__version__,
        "files": {
            name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
            for name in FILES
        },
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(out_dir / MANIFEST)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an export directory, checked for format and completeness."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} holds no {MANIFEST}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"unreadable manifest: {exc}") from None
    if manifest.get("format") not in FORMATS:
        raise ArtifactError(
            f"export format {manifest.get('format')!r} is not one of {FORMATS}; "
            "export the avatar again"
        )
    missing = [name for name in FILES if name not in manifest.get("files", {})]
    if missing:
        raise ArtifactError(f"manifest lists no {', '.join(missing)}")
    return manifest


def verify(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every file's size and sha256 against the manifest."""
    for name, facts in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{name} is missing")
        if path.stat().st_size != int(facts["bytes"]):
            raise ArtifactError(f"{name} has {path.stat().st_size} bytes, not {facts['bytes']}")
        if sha256_file(path) != facts["sha256"]:
            raise ArtifactError(f"{name} fails its sha256 check")


def load_module(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """Load the TorchScript renderer onto `device`."""
    with warnings.catch_warnings():
        # torch >= 2.9 marks TorchScript deprecated in favour of torch.export, which cannot
        # export this renderer (its ray sampling has data-dependent shapes); it still loads.
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return module


@dataclass
class ExportedAvatar:
    """A verified, loaded export: renders frames from named per-frame inputs."""

    manifest: dict[str, Any]
    assets: dict[str, np.ndarray]
    module: torch.jit.ScriptModule
    device: torch.device

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> ExportedAvatar:
        """Verify checksums and load; raises ArtifactError when the export cannot be used."""
        manifest = read_manifest(directory)
        verify(directory, manifest)
        device = device or default_device()
        return cls(
            manifest, load_assets(directory / ASSETS), load_module(directory / RENDERER, device),
            device,
        )  # fmt: skip

    @property
    def family(self) -> str:
        """The renderer family that made the export."""
        return str(self.manifest.get("family", ""))

    @property
    def size(self) -> int:
        """Frame side in pixels (the longer side of a non-square frame)."""
        return int(self.manifest["size"])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(height, width) of a rendered frame."""
        return frame_shape(self.manifest)

    @property
    def inputs(self) -> list[InputSpec]:
        """The named per-frame inputs, in call order."""
        return manifest_inputs(self.manifest)

    def input_shape(self, name: str) -> tuple[int, ...]:
        """The per-frame shape of input `name`; KeyError when the renderer has none."""
        for spec in self.inputs:
            if spec.name == name:
                return spec.shape
        raise KeyError(f"this renderer takes no input {name!r}")

    @torch.no_grad()
    def render(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, height, width, 4) uint8 premultiplied RGBA for B frames' named inputs."""
        specs = self.inputs
        inputs = conform_inputs(specs, inputs)
        b = len(inputs[specs[0].name]) if specs else 0
        height, width = self.frame_shape
        out = np.empty((b, height, width, 4), np.uint8)
        # The traced graph renders one frame; a batch is a loop (the cost is per pixel anyway).
        for i in range(b):
            args = [torch.as_tensor(inputs[s.name][i : i + 1], device=self.device) for s in specs]
            frame = self.module(*args)
            if tuple(frame.shape) != (1, height, width, 4):
                raise ArtifactError(
                    f"the renderer returned {tuple(frame.shape)}, its manifest says "
                    f"(1, {height}, {width}, 4)"
                )
            out[i] = frame[0].cpu().numpy()
        return out
